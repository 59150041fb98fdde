"""Where the README's activate() call spends its time, attributed item by item, in fresh processes.

    python bench/boot_breakdown.py [--repeats 21] [--strace] [--realtime]

A diagnostic beside bench/boot_overhead.py (same root, same target, same fresh processes that
import torch first), not a benchmark: each process wraps cachekeeper's functions with timers from
the outside (nothing in cachekeeper/ is changed), so its totals run a little above
boot_overhead.py's. Every item gets its wall time and the CPU time of the thread (the difference is
waiting: an fsync, another thread starting). Per process it records:

- imports: each module the call imports after torch, its own time (what it executes, less the
  imports it makes); within it, the time spent in class statements, in @dataclass, named tuples, enums
  and protocols, and in compiling regular expressions, and (measured after the imports, from the
  page cache) unmarshalling its bytecode; tomllib and shlex, which only the target parser needs;
- activate() enter and exit: each step (target parsing and validation, facts, NVML's calls where
  there is a GPU, keys, state check, journal records and their fsyncs, use records, the renewal
  thread's start, sidecar reads, environment);
- the exit handlers cachekeeper registers (releasing the use records), and the garbage
  collector's passes in each phase.

Medians over the processes, taken alone as boot_overhead.py takes them. ``--strace`` also runs one
process under strace and counts the system calls made between ``import torch`` and the end of the
exit handlers, by phase and kind, and lists those that write, fsync or touch the cache root
(strace slows each call, so only its counts are used).
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import boot_overhead  # re-executes under the project's .venv, as boot_overhead.py does
from common import installed_env, machine, save

MARK = "/.cachekeeper-bench-mark-"  # stat()ed at phase boundaries, so that strace can find them

INSTRUMENTED = r"""
import time
import torch
__REALTIME__
import atexit, collections, dataclasses, json, os, re, sys, threading, typing, marshal, importlib.util

pc = time.perf_counter_ns
cpu = time.thread_time_ns  # this thread's CPU time: what waiting (fsync, other processes) leaves out


def now():
    return pc(), cpu()


T = {}
PHASE = ["import"]
ORDER = []


def add(label, started):
    wall, spent = pc() - started[0], cpu() - started[1]
    entry = T.get(label)
    if entry is None:
        entry = T[label] = [0, 0, 0]
        ORDER.append(label)
    entry[0] += wall
    entry[1] += 1
    entry[2] += spent


def mark(phase):
    try:
        os.stat(MARK + phase)
    except OSError:
        pass
    PHASE[0] = phase


def timed(label, function, by_argument=False):
    def wrapper(*args, **kwargs):
        started = now()
        try:
            return function(*args, **kwargs)
        finally:
            name = label if not by_argument else f"{label} {args[1] if len(args) > 1 else ''}".rstrip()
            add(name, started)
    return wrapper


def report():
    add("atexit: our report handler starts", now())
    mark("end")
    T["_total_ns"] = [pc() - t0[0], 1, cpu() - t0[1]]
    sys.stdout.write(json.dumps({"timings": T, "order": ORDER}) + "\n")
    sys.stdout.flush()


MARK = __MARK__
atexit.register(report)
import gc
_gc_started = {}


def gc_timer(phase, info):  # the garbage collector's passes, by generation: torch leaves a large heap
    if phase == "start":
        _gc_started["at"] = now()
    elif "at" in _gc_started:
        add(f"{PHASE[0]}: gc collection, generation {info['generation']}", _gc_started.pop("at"))


gc.callbacks.append(gc_timer)
mark("import")
t0 = now()

# --- what cachekeeper's modules do at import --------------------------------------------------
original_dataclass = dataclasses.dataclass


def dataclass(cls=None, /, **options):
    def apply(c):
        started = now()
        made = original_dataclass(**options)(c)
        add(f"{PHASE[0]}: @dataclass {c.__module__.removeprefix('cachekeeper.')}.{c.__qualname__}", started)
        return made
    return apply if cls is None else apply(cls)


dataclasses.dataclass = dataclass
original_namedtuple = collections.namedtuple


def namedtuple(typename, *args, **kwargs):
    started = now()
    made = original_namedtuple(typename, *args, **kwargs)
    module = kwargs.get("module") or "?"
    add(f"{PHASE[0]}: NamedTuple {module.removeprefix('cachekeeper.')}.{typename}", started)
    return made


collections.namedtuple = namedtuple
original_compile = re._compile


def compile_pattern(pattern, flags):
    started = now()
    try:
        return original_compile(pattern, flags)
    finally:
        caller = sys._getframe(1)
        while caller is not None and caller.f_globals.get("__name__", "").startswith("re"):
            caller = caller.f_back
        module = caller.f_globals.get("__name__", "?") if caller is not None else "?"
        add(f"{PHASE[0]}: regex {module.removeprefix('cachekeeper.')}", started)


re._compile = compile_pattern


def class_timer(metaclass, kind):
    original = metaclass.__new__

    def new(meta, name, bases, namespace, **kwargs):
        started = now()
        made = original(meta, name, bases, namespace, **kwargs)
        module = namespace.get("__module__", "?").removeprefix("cachekeeper.")
        add(f"{PHASE[0]}: {kind} {module}.{name}", started)
        return made

    metaclass.__new__ = new


import abc, builtins, enum
original_build_class = builtins.__build_class__


def build_class(body, name, *bases, **kwargs):
    started = now()
    try:
        return original_build_class(body, name, *bases, **kwargs)
    finally:
        module = body.__globals__.get("__name__", "?").removeprefix("cachekeeper.")
        add(f"{PHASE[0]}: class statement {module}.{name}", started)


builtins.__build_class__ = build_class
class_timer(enum.EnumType, "enum")
class_timer(abc.ABCMeta, "Protocol/ABC")

MODULES = __MODULES__  # the modules the call imports, each after those it imports (-X importtime's order)
import importlib.machinery

NESTED = []  # per module being executed: the time of the imports it made, to leave out of its own


def exec_module(loader, module):
    NESTED.append([0, 0])
    started = now()
    try:
        return original_exec_module(loader, module)
    finally:
        wall, spent = pc() - started[0], cpu() - started[1]
        inner = NESTED.pop()
        T[f"import: module {module.__name__}"] = [wall - inner[0], 1, spent - inner[1]]
        ORDER.append(f"import: module {module.__name__}")
        if NESTED:
            NESTED[-1][0] += wall
            NESTED[-1][1] += spent


original_exec_module = importlib.machinery.SourceFileLoader.exec_module
importlib.machinery.SourceFileLoader.exec_module = exec_module
for name in MODULES:
    __import__(name)
importlib.machinery.SourceFileLoader.exec_module = original_exec_module
mark("setup")  # instrumenting: not counted

import cachekeeper, types

for name in MODULES:  # the bytecode's unmarshalling alone, read again from the page cache
    source = getattr(sys.modules[name], "__file__", None)
    if not source or not source.endswith(".py"):
        continue
    with open(importlib.util.cache_from_source(source), "rb") as handle:
        data = handle.read()
    started = now()
    marshal.loads(data[16:])
    T[f"unmarshal {name}"] = [pc() - started[0], 1, cpu() - started[1]]

# --- activate(): every function and method of cachekeeper's, timed from the outside --------------
# Each call is counted under the chain of timed calls it was made from, so the report is a tree.
STACK = []


MAIN = threading.get_ident()


def traced(label, function):
    def wrapper(*args, **kwargs):
        if threading.get_ident() != MAIN:  # the use records' renewal thread: not the boot's time
            return function(*args, **kwargs)
        STACK.append(label)
        started = now()
        try:
            return function(*args, **kwargs)
        finally:
            add(f"{PHASE[0]}: " + " > ".join(STACK), started)
            STACK.pop()
    wrapper.__wrapped__ = function
    return wrapper


WRAPPED = {}
ours = [m for n, m in list(sys.modules.items()) if n == "cachekeeper" or n.startswith("cachekeeper.")]
for module in ours:
    short = module.__name__.removeprefix("cachekeeper.")
    for name, value in list(vars(module).items()):
        if isinstance(value, types.FunctionType) and value.__module__ == module.__name__ and name != "__getattr__":
            WRAPPED[value] = traced(f"{short}.{name}", value)
        elif isinstance(value, type) and value.__module__ == module.__name__:
            for attribute, member in list(vars(value).items()):
                function = member.__func__ if isinstance(member, (staticmethod, classmethod)) else member
                generated = ("__repr__", "__eq__", "__hash__", "__setattr__", "__delattr__")
                if not isinstance(function, types.FunctionType) or attribute in generated:
                    continue
                wrapper = traced(f"{short}.{value.__qualname__}.{attribute}", function)
                setattr(value, attribute, type(member)(wrapper) if function is not member else wrapper)
for module in ours:  # names imported from other modules (from .x import f) point at the wrappers too
    for name, value in list(vars(module).items()):
        if isinstance(value, types.FunctionType) and value in WRAPPED:
            setattr(module, name, WRAPPED[value])

original_fsync = os.fsync


def fsync(descriptor):
    started = now()
    try:
        return original_fsync(descriptor)
    finally:
        add(f"{PHASE[0]}: " + " > ".join([*STACK, "os.fsync"]), started)


os.fsync = fsync
original_start = threading.Thread.start


def start(self):
    started = now()
    try:
        return original_start(self)
    finally:
        add(f"{PHASE[0]}: " + " > ".join([*STACK, f"threading.Thread.start ({self.name})"]), started)


threading.Thread.start = start

mark("enter")
started = now()
with cachekeeper.activate(__ROOT__, target="cachekeeper.toml") as ck:
    add("activate() enter", started)
    mark("exit")
    started = now()
add("activate() exit", started)
mark("after")
assert all(ck.hits.values()) and len(ck.hits) == 2, ck.hits
atexit.register(mark, "atexit")  # registered last, so it runs first: before cachekeeper's handlers
"""


def child_program(root: Path, modules: list[str]) -> str:
    return (
        INSTRUMENTED.replace("__REALTIME__", boot_overhead.REALTIME[0])
        .replace("__MARK__", repr(MARK))
        .replace("__ROOT__", repr(str(root)))
        .replace("__MODULES__", repr(modules))
    )


def imported_modules(root: Path, scratch: Path) -> list[str]:
    """What the README's call imports after torch, each module after the modules it imports."""
    program = (
        f"import torch\nimport cachekeeper\nwith cachekeeper.activate({str(root)!r}, target='cachekeeper.toml'): pass"
    )
    with tempfile.TemporaryFile() as errors:
        subprocess.run([sys.executable, "-X", "importtime", "-c", program], cwd=scratch, env=installed_env(),
                       stdout=subprocess.DEVNULL, stderr=errors, check=True)  # fmt: skip
        errors.seek(0)
        lines = errors.read().decode().splitlines()
    names = [line.split("|")[-1].strip() for line in lines if line.startswith("import time:") and "|" in line]
    return names[names.index("torch") + 1 :]


def run_child(program: str, scratch: Path, prefix: list[str] = ()) -> dict:
    output, timing = boot_overhead.run_program(program, scratch, prefix)
    return {**json.loads(output.strip().splitlines()[-1]), **timing}


def aggregate(runs: list[dict]) -> dict[str, dict[str, float]]:
    labels: list[str] = []
    for run in runs:
        labels.extend(label for label in run["order"] if label not in labels)
    labels.extend(label for label in runs[0]["timings"] if label not in labels)
    result = {}
    for label in labels:
        values = [run["timings"].get(label, [0, 0, 0]) for run in runs]
        result[label] = {
            "ms": statistics.median(wall for wall, _, _ in values) / 1e6,
            "cpu_ms": statistics.median(spent for _, _, spent in values) / 1e6,
            "calls": statistics.median(count for _, count, _ in values),
        }
    return result


def group_imports(stats: dict[str, dict[str, float]]) -> list[tuple[str, float, str]]:
    """Per module: its own import time, and what in it defines classes or compiles patterns
    (tomllib with its submodules)."""
    rows = []
    for label, entry in stats.items():
        if not label.startswith("import: module "):
            continue
        module = label.removeprefix("import: module ")
        short = module.removeprefix("cachekeeper.")

        def ours(name: str, short: str = short, module: str = module) -> bool:
            return name == short or (module == "tomllib" and name.startswith("tomllib."))

        parts = []
        for kind in ("class statement", "@dataclass", "NamedTuple", "enum", "Protocol/ABC", "regex"):
            prefix = f"import: {kind} "
            hits = [
                v for k, v in stats.items()
                if k.startswith(prefix)
                and ours(k[len(prefix) :] if kind == "regex" else k[len(prefix) :].rpartition(".")[0])
            ]  # fmt: skip
            count = sum(v["calls"] for v in hits)
            if count:
                parts.append(f"{int(count)} {kind} {sum(v['ms'] for v in hits):.2f}")
        unmarshal = sum(
            v["ms"]
            for k, v in stats.items()
            if k.startswith("unmarshal ") and ours(k[10:].removeprefix("cachekeeper."))
        )
        parts.append(f"unmarshal {unmarshal:.2f}")
        rows.append((module, entry["ms"], ", ".join(parts)))
    return rows


STRACE_KINDS = re.compile(r"^(?:\[pid\s+\d+\]\s+)?(?:\d+\s+)?(\w+)\(")


def strace_counts(scratch: Path, root: Path, modules: list[str]) -> dict:
    if shutil.which("strace") is None:
        return {"error": "strace is not installed (apt-get install strace)"}
    with tempfile.TemporaryDirectory() as directory:
        trace = Path(directory) / "trace"
        run_child(child_program(root, modules), scratch, ["strace", "-f", "-qq", "-o", str(trace), "-s", "200"])
        lines = trace.read_text(errors="replace").splitlines()
    phase, counts, files = None, collections.defaultdict(collections.Counter), collections.defaultdict(list)
    for line in lines:
        if MARK in line:
            phase = line.split(MARK, 1)[1].split('"', 1)[0]
            continue
        if phase in (None, "setup", "end"):
            continue
        match = STRACE_KINDS.match(line.split(" ", 1)[1] if line[:1].isdigit() else line)
        if not match:
            continue
        kind = match.group(1)
        if kind == "clock_gettime":
            continue  # the timers this program adds (the thread's CPU clock is a system call)
        counts[phase][kind] += 1
        if kind in ("openat", "mkdir", "rename", "unlink", "fsync", "write", "link", "newfstatat", "getdents64"):
            if str(root) in line or kind in ("fsync", "write", "getdents64"):
                files[phase].append(line.split(" ", 1)[1][:160])
    return {"counts": {phase: dict(c.most_common()) for phase, c in counts.items()},
            "root_calls": {phase: calls for phase, calls in files.items()}}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--strace", action="store_true", help="also count system calls in one process")
    parser.add_argument("--keep", type=Path, help="build the root and targets here and keep them")
    parser.add_argument("--gpu", default="cpu", help="as in boot_overhead.py")
    parser.add_argument("--quiet-cpu", type=float, default=None, help="as in boot_overhead.py")
    parser.add_argument("--realtime", action="store_true", help="as in boot_overhead.py")
    parser.add_argument("--quiet-disk", type=float, default=2.0, help="as in boot_overhead.py")
    parser.add_argument("--retries", type=int, default=12, help="as in boot_overhead.py")
    parser.add_argument("--patience", type=float, default=3600.0, help="as in boot_overhead.py")
    options = parser.parse_args()
    boot_overhead.set_realtime(options)
    context = None
    if options.keep:
        options.keep.mkdir(parents=True, exist_ok=True)
        scratch = options.keep.resolve()
    else:
        context = tempfile.TemporaryDirectory(prefix="boot-breakdown-")
        scratch = Path(context.name)
    try:
        root, _ = boot_overhead.prepare(scratch, options.gpu)
        quiet = boot_overhead.Quiet(options.quiet_cpu, options.quiet_disk, options.retries, options.patience)
        modules = imported_modules(root, scratch)
        run_child(child_program(root, modules), scratch)  # warm-up, not counted
        runs = [boot_overhead.run_quietly(lambda: run_child(child_program(root, modules), scratch), quiet)
                for _ in range(options.repeats)]  # fmt: skip
        stats = aggregate(runs)
        syscalls = strace_counts(scratch, root, modules) if options.strace else None
    finally:
        if context is not None:
            context.cleanup()

    print(
        f"machine: {machine()}; {options.repeats} fresh processes; medians in ms: wall / CPU of the thread (calls)"
        + ("; measured code runs SCHED_FIFO (--realtime)" if options.realtime else "")
    )
    print(
        f"quiet samples: waited {quiet.waited:.0f} s; {quiet.taken_again} taken again; "
        f"{quiet.kept_disturbed} kept disturbed"
    )
    total = stats.pop("_total_ns")
    print(f"\ntotal, instrumented, import torch → end of exit handlers: {total['ms']:.1f} / {total['cpu_ms']:.1f} ms")
    print("\nimports (each module's own time; what in it defines classes or compiles patterns, wall):")
    for module, ms, detail in group_imports(stats):
        cpu_ms = stats[f"import: module {module}"]["cpu_ms"]
        print(f"  {module:<22} {ms:5.2f} / {cpu_ms:5.2f}   {detail}")
    imports = [v for k, v in stats.items() if k.startswith("import: module ")]
    print(f"  {'all':<22} {sum(v['ms'] for v in imports):5.2f} / {sum(v['cpu_ms'] for v in imports):5.2f}")

    def show(label: str, entry: dict) -> None:
        print(f"  {label:<62} {entry['ms']:6.2f} / {entry['cpu_ms']:5.2f}  ({entry['calls']:g})")

    print("\nactivate(), exit handlers, and everything else recorded (indented: part of the line above):")
    for label, entry in stats.items():
        if not label.startswith(("import: ", "unmarshal ")):
            show(label, entry)
    print("\nclass definitions and patterns at import:")
    for label, entry in stats.items():
        if label.startswith("import: ") and not label.startswith("import: module "):
            show(label, entry)
    if syscalls is not None:
        print("\nsystem calls between import torch and the end of the exit handlers, by phase (strace):")
        for phase, counts in syscalls.get("counts", {}).items():
            print(f"  {phase:<8} " + ", ".join(f"{kind} {n}" for kind, n in counts.items()))
        if "error" in syscalls:
            print("  " + syscalls["error"])
        print("\nwrites, fsyncs and what touches the cache root, by phase (strace):")
        for phase, calls in syscalls.get("root_calls", {}).items():
            for call in calls:
                print(f"  {phase:<8} {call}")
    save(
        "boot_breakdown",
        {
            "repeats": options.repeats,
            "kept_disturbed": quiet.kept_disturbed,
            "total_ms": total["ms"],
            "total_cpu_ms": total["cpu_ms"],
            "items": stats,
            "syscalls": syscalls,
        },
    )


if __name__ == "__main__":
    main()
