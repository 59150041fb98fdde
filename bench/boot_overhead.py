"""What cachekeeper adds to a boot that imports torch: the README's call first, the others beside it.

    python bench/boot_overhead.py [--repeats 21] [--cases documented,baseline,...]

The headline is the call the README documents: ``activate(root, target="cachekeeper.toml")`` with
a real target file (gpu = "cpu", a model pinned to a commit sha, layers weights + compile), both
layers already published (the bench lays out a real Hugging Face cache under the root's weights
directory and publishes both layers before it measures), so that both are hits.

Every sample is a fresh process. The baseline process imports torch and exits; a measured process
imports torch, then ``import cachekeeper``, enters and exits ``activate()``, and exits. Each
process is timed twice, both times from just after ``import torch``:

- in process: to the last atexit handler (registered just after ``import torch``, it runs after
  every handler cachekeeper registers: atexit runs them last in, first out);
- end to end: to the parent's ``wait()`` returning, which adds the interpreter's finalization and
  the process's exit. Both ends read ``time.time()`` (CLOCK_REALTIME), the only clock two
  processes share.

What cachekeeper adds is the median of the measured processes less the median of the baseline
processes, both from the same run; the processes of every case run interleaved, in a shuffled
order each round, so that a drift of the machine falls on all of them alike. The spread is the
interquartile range of the added time per process (each process's time less the baseline median).
Target: ≤ 15 ms for the documented call, in process, on the 2-core CI machine.

A few milliseconds drown in other work on a machine of 2 cores, so every sample is taken alone:
the bench waits until the machine is idle, and takes a sample again when other processes used the
CPU or wrote to disk while it ran (see ``Quiet``; the report says how many were taken again).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
_VENV_PYTHON = REPO / ".venv" / "bin" / "python"
if _VENV_PYTHON.exists() and Path(sys.prefix).resolve() != (REPO / ".venv").resolve():
    # `python bench/boot_overhead.py` from any shell runs with the project's interpreter, which has torch.
    os.execv(_VENV_PYTHON, [str(_VENV_PYTHON), *sys.argv])

from common import installed_env, machine, save  # noqa: E402

sys.path.insert(0, str(REPO))  # the root is laid out with the test suite's own helper
from tests.helpers import make_hf_model  # noqa: E402

TARGET_MS = 15.0
MODEL = "bench-org/tiny-model"
ENGINE = {"max_model_len": 4096}

# One child program for every case: {prelude} is the boot cachekeeper is added to, {body} the
# cachekeeper code. The child imports nothing after the prelude that the baseline does not.
CHILD = """\
import time
_started = time.perf_counter()
{prelude}
import atexit, sys
{realtime}
_t0_wall = time.time()
_t0 = time.perf_counter()
_c0 = time.process_time()
_marks = []


def _report():
    end = time.perf_counter()
    cpu = time.process_time() - _c0
    marks = ", ".join('"%s": %r' % (name, at - _t0) for name, at in _marks)
    hits = ", ".join('"%s": %s' % (k, "true" if v else "false") for k, v in _hits.items())
    sys.stdout.write('{{"t0_wall": %r, "prelude": %r, "in_process": %r, "cpu": %r, "marks": {{%s}}, "hits": {{%s}}}}\\n'
                     % (_t0_wall, _t0 - _started, end - _t0, cpu, marks, hits))
    sys.stdout.flush()


atexit.register(_report)  # registered first, so it runs last: after cachekeeper's handlers
_hits = {{}}
{body}
"""

BODY = """\
import cachekeeper
_marks.append(("import", time.perf_counter()))
cachekeeper.activate  # the first use of the name imports cachekeeper.runtime
_marks.append(("runtime", time.perf_counter()))
with cachekeeper.activate({root!r}{arguments}) as ck:
    _marks.append(("enter", time.perf_counter()))
_marks.append(("exit", time.perf_counter()))
_hits = ck.hits
"""


class Case:
    def __init__(self, name: str, title: str, *, torch: bool = True, call: str | None = None,
                 arguments: str = "", hit: bool = True, layers: tuple[str, ...] = ()) -> None:  # fmt: skip
        self.name, self.title, self.torch, self.call = name, title, torch, call
        self.arguments, self.hit, self.layers = arguments, hit, layers

    @property
    def baseline(self) -> str:
        return "baseline" if self.torch else "bare_baseline"

    def program(self, root: Path, sha: str) -> str:
        prelude = "import torch" if self.torch else "pass"
        arguments = self.arguments.format(model=MODEL, sha=sha, engine=ENGINE)
        body = "" if self.call is None else BODY.format(root=str(root), arguments=arguments)
        return CHILD.format(prelude=prelude, body=body, realtime=REALTIME[0])


TARGET_ARG = ', target="cachekeeper.toml"'
CASES = [
    Case("baseline", "import torch, then exit (the baseline)"),
    Case("documented", "target file, weights + compile, both hits (the README's call)",
         call='activate(root, target="cachekeeper.toml")', arguments=TARGET_ARG, layers=("weights", "compile")),
    Case("target_compile", "target file, compile only, hit",
         call='activate(root, target="cachekeeper-compile.toml")', arguments=', target="cachekeeper-compile.toml"',
         layers=("compile",)),
    Case("kwargs_two", "no target file, weights + compile, both hits",
         call="activate(root, model=MODEL, revision=SHA, engine={'max_model_len': 4096})",
         arguments=", model={model!r}, revision={sha!r}, engine={engine!r}", layers=("weights", "compile")),
    Case("no_target_compile", "no target file, compile only, hit (what this bench used to measure)",
         call="activate(root)", layers=("compile",)),
    Case("documented_miss", "target file, weights + compile, fresh empty root (both miss)",
         call='activate(root, target="cachekeeper.toml")', arguments=TARGET_ARG, hit=False,
         layers=("weights", "compile")),
    Case("no_target_compile_miss", "no target file, compile only, fresh empty root (miss)",
         call="activate(root)", hit=False, layers=("compile",)),
    Case("bare_baseline", "bare interpreter, then exit (the baseline without torch)", torch=False),
    Case("bare_documented", "bare interpreter, the README's call, both hits (every import charged)", torch=False,
         call='activate(root, target="cachekeeper.toml")', arguments=TARGET_ARG, layers=("weights", "compile")),
]  # fmt: skip
BY_NAME = {case.name: case for case in CASES}

# With --realtime, what each process runs once its prelude is imported, before its clocks start: it
# takes the CPU from every ordinary process (SCHED_FIFO), for the few milliseconds measured only,
# well inside the kernel's budget for real-time processes (0.95 s a second), which would otherwise
# pause it for 50 ms in the middle of importing torch.
REALTIME_SNIPPET = "import os; os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(50))"
REALTIME = [""]


# --- the cache root and the target ---------------------------------------------------------------


def write_targets(directory: Path, sha: str, gpu: str) -> None:
    from importlib import metadata

    torch_version = metadata.version("torch")
    body = f"""\
[target]
gpu = "{gpu}"
model = "{MODEL}"
revision = "{sha}"
layers = {{layers}}

[target.packages]
torch = "{torch_version}"

[target.engine]
max_model_len = {ENGINE["max_model_len"]}
"""
    (directory / "cachekeeper.toml").write_text(body.format(layers='["weights", "compile"]'))
    (directory / "cachekeeper-compile.toml").write_text(body.format(layers='["compile"]'))


def prepare(scratch: Path, gpu: str = "cpu") -> tuple[Path, str]:
    """The shared root, with the model in its weights directory and every hit case published;
    ``gpu`` is what the targets declare (cpu here; the GPU type on a machine with one)."""
    root = scratch / "root"
    if (root / "weights").is_dir():  # kept from an earlier run (--keep): published already
        repo = root / "weights" / ("models--" + MODEL.replace("/", "--"))
        return root, (repo / "refs" / "main").read_text().strip()
    files = {
        "config.json": b'{"architectures": ["LlamaForCausalLM"], "hidden_size": 64}',
        "tokenizer.json": b'{"version": "1.0"}',
        "model.safetensors": hashlib.sha256(b"weights").digest() * 2048,  # 64 KiB
    }
    sha = make_hf_model(root / "weights", MODEL, files)
    write_targets(scratch, sha, gpu)
    for case in CASES:
        if case.call is not None and case.hit:
            run_case(case, root, scratch, sha)  # publishes what it misses: later runs hit
    return root, sha


# --- running one process -------------------------------------------------------------------------


def _machine_counters() -> tuple[float, int]:
    """CPU seconds the whole machine spent busy (steal included), and sectors written to disks."""
    with open("/proc/stat") as handle:
        fields = [int(value) for value in handle.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    busy = (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
    written = 0
    with open("/proc/diskstats") as handle:
        for line in handle:
            parts = line.split()
            if len(parts) > 9 and re.fullmatch(r"(?:[sv]d[a-z]+|nvme\d+n\d+|xvd[a-z]+)", parts[2]):
                written += int(parts[9])
    return busy, written


def run_program(program: str, cwd: Path, prefix: Sequence[str] = ()) -> tuple[str, dict]:
    """Run ``python -c program`` in a fresh process, as an installed cachekeeper would run; its
    stdout, and its timing beside what the rest of the machine did meanwhile: the CPU time other
    processes took and what was written to disk (the CPU counters tick every 10 ms)."""
    with tempfile.TemporaryFile() as errors:
        busy_before, written_before = _machine_counters()
        children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        own_before = time.process_time()
        started = time.time()
        child = subprocess.Popen(
            [*prefix, sys.executable, "-c", program], cwd=cwd, env=installed_env(),
            stdout=subprocess.PIPE, stderr=errors, text=True,
        )  # fmt: skip
        output, _ = child.communicate()
        ended = time.time()
        own = time.process_time() - own_before
        children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        busy_after, written_after = _machine_counters()
        errors.seek(0)
        stderr = errors.read().decode(errors="replace")
    if child.returncode != 0:
        raise SystemExit(f"a measured process failed ({child.returncode}):\n{stderr}")
    child_cpu = sum(getattr(children_after, f) - getattr(children_before, f) for f in ("ru_utime", "ru_stime"))
    return output, {
        "ended": ended,
        "process": ended - started,
        "others_cpu": max(0.0, busy_after - busy_before - child_cpu - own),
        "others_written_mib": max(0, written_after - written_before) * 512 / 2**20,
        "stderr": stderr.strip(),
    }


def run_case(case: Case, root: Path, scratch: Path, sha: str) -> dict:
    output, timing = run_program(case.program(root, sha), scratch)
    sample = json.loads(output.strip().splitlines()[-1])
    sample.update(timing)
    sample["end_to_end"] = timing["ended"] - sample["t0_wall"]
    return sample


class Quiet:
    """Samples taken while nothing else runs. Before each sample the machine must have been idle for
    a moment (other processes using at most ``cpu_share`` of a core); after it, other processes must
    have taken at most ``cpu_share`` of a core over the sample's life and written at most
    ``written_mib`` to disk (the sample's own writes included: a journal line, two use records, and
    the file system's journal behind its fsyncs). A disturbed sample is taken again, up to
    ``retries`` times; once ``patience`` seconds were spent waiting in all, samples are taken as they
    come, and those disturbed are counted."""

    def __init__(self, cpu_share: float, written_mib: float, retries: int, patience: float) -> None:
        self.cpu_share, self.written_mib, self.retries, self.patience = cpu_share, written_mib, retries, patience
        self.taken_again = 0
        self.kept_disturbed = 0
        self.waited = 0.0

    def wait(self) -> None:
        while self.waited < self.patience:
            busy_before, _ = _machine_counters()
            time.sleep(0.3)
            busy_after, _ = _machine_counters()
            self.waited += 0.3
            if busy_after - busy_before <= 0.3 * self.cpu_share + 0.01:  # one 10 ms tick of slack
                return
            time.sleep(1.0)
            self.waited += 1.0

    def ok(self, sample: dict) -> bool:
        return (
            sample["others_cpu"] <= self.cpu_share * sample["process"] + 0.02
            and sample["others_written_mib"] <= self.written_mib
        )


def run_quietly(take: Callable[[], dict], quiet: Quiet) -> dict:
    """``take()`` a sample while nothing else runs, taking it again while other work disturbs it."""
    for attempt in range(quiet.retries + 1):
        quiet.wait()
        sample = take()
        if quiet.ok(sample):
            return sample
        if attempt < quiet.retries and quiet.waited < quiet.patience:
            quiet.taken_again += 1
        else:
            break
    quiet.kept_disturbed += 1
    sample["disturbed"] = True
    return sample


def take_sample(case: Case, root: Path, scratch: Path, sha: str) -> dict:
    if case.hit or case.call is None:
        return run_case(case, root, scratch, sha)
    with tempfile.TemporaryDirectory(dir=scratch, prefix=f"empty-{case.name}-") as fresh:
        return run_case(case, Path(fresh), scratch, sha)  # a miss: a fresh empty root each time


def measure(
    cases: list[Case], repeats: int, warmup: int, seed: int, scratch: Path, root: Path, sha: str, quiet: Quiet
) -> dict:
    order = random.Random(seed)
    samples: dict[str, list[dict]] = {case.name: [] for case in cases}
    warnings: dict[str, str] = {}
    for round_number in range(warmup + repeats):
        shuffled = list(cases)
        order.shuffle(shuffled)
        for case in shuffled:
            sample = run_quietly(lambda case=case: take_sample(case, root, scratch, sha), quiet)
            expected = {layer: case.hit for layer in case.layers}
            if sample["hits"] != expected:
                raise SystemExit(f"{case.name}: hits {sample['hits']}, expected {expected}")
            if sample["stderr"]:
                warnings.setdefault(case.name, sample["stderr"])
            if round_number >= warmup:
                samples[case.name].append(sample)
        if sys.stderr.isatty():
            done = f"round {round_number + 1 - warmup}/{repeats}" if round_number >= warmup else "warming up"
            print(f"\r{done}; {quiet.taken_again} disturbed samples taken again, {quiet.waited:.0f} s waited",
                  end="", file=sys.stderr, flush=True)  # fmt: skip
    if sys.stderr.isatty():
        print(file=sys.stderr)
    for name, text in warnings.items():
        print(f"note: {name} wrote to stderr: {text.splitlines()[-1]}", file=sys.stderr)
    return samples


# --- statistics ----------------------------------------------------------------------------------


def quartiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[2]


def bootstrap_difference(case: list[float], base: list[float], seed: int, rounds: int = 2000) -> tuple[float, float]:
    """A 95% interval for median(case) - median(base), resampling both."""
    draw = random.Random(seed)
    differences = sorted(
        statistics.median(draw.choices(case, k=len(case))) - statistics.median(draw.choices(base, k=len(base)))
        for _ in range(rounds)
    )
    return differences[int(0.025 * rounds)], differences[int(0.975 * rounds) - 1]


def summarize(samples: dict[str, list[dict]], seed: int) -> dict:
    results = {}
    for name, runs in samples.items():
        case = BY_NAME[name]
        ms = {
            metric: [run[metric] * 1000 for run in runs]
            for metric in ("in_process", "end_to_end", "cpu", "process", "prelude")
        }
        entry = {
            "title": case.title,
            "call": case.call,
            "torch": case.torch,
            "layers": list(case.layers),
            "hit": case.hit if case.call else None,
            "median_ms": {metric: statistics.median(values) for metric, values in ms.items()},
            "samples_ms": ms,
        }
        if case.call is not None and case.baseline in samples:
            base_runs = samples[case.baseline]
            added = {}
            for metric in ("in_process", "end_to_end", "cpu"):
                base = [run[metric] * 1000 for run in base_runs]
                base_median = statistics.median(base)
                low, high = quartiles([value - base_median for value in ms[metric]])
                ci_low, ci_high = bootstrap_difference(ms[metric], base, seed)
                added[metric] = {
                    "median_ms": statistics.median(ms[metric]) - base_median,
                    "p25_ms": low, "p75_ms": high, "ci95_ms": [ci_low, ci_high],
                }  # fmt: skip
            entry["added"] = added
            base_process = statistics.median(run["process"] * 1000 for run in base_runs)
            entry["ratio"] = (base_process + added["end_to_end"]["median_ms"]) / base_process
            base_after = statistics.median(run["in_process"] * 1000 for run in base_runs)
            phases, previous = {}, "start"
            marks = [run["marks"] for run in runs]
            for mark in ("import", "runtime", "enter", "exit"):
                phases[f"{previous}→{mark}"] = statistics.median(
                    m[mark] - (m[previous] if previous != "start" else 0.0) for m in marks
                ) * 1000  # fmt: skip
                previous = mark
            phases["exit→atexit done"] = (
                statistics.median(run["in_process"] - run["marks"]["exit"] for run in runs) * 1000 - base_after
            )
            entry["phases_ms"] = {
                "import cachekeeper": phases["start→import"] + phases["import→runtime"],
                "activate() enter": phases["runtime→enter"],
                "activate() exit": phases["enter→exit"],
                "exit handlers": phases["exit→atexit done"],
            }
        results[name] = entry
    return results


# --- the report ----------------------------------------------------------------------------------


def report(results: dict, repeats: int, load: tuple[float, float], quiet: Quiet, gpu: str) -> None:
    print(
        f"machine: {machine()}; load average {load[0]:.2f} before, {load[1]:.2f} after; target gpu = {gpu!r}"
        + ("; measured code runs SCHED_FIFO (--realtime)" if REALTIME[0] else "")
    )
    print(
        f"quiet samples: waited {quiet.waited:.0f} s for the machine to be idle; {quiet.taken_again} samples disturbed "
        f"by other work were taken again; {quiet.kept_disturbed} kept disturbed"
        + (" (these numbers are not worth keeping)" if quiet.kept_disturbed else "")
    )
    base = results.get("baseline")
    if base:
        print(
            f"baseline: a process that imports torch takes {base['median_ms']['process']:.0f} ms, "
            f"import torch {base['median_ms']['prelude']:.0f} ms of it; {repeats} processes per case, interleaved"
        )
    print("\nadded to the baseline, ms: median [p25, p75]")
    print(f"{'case':<62} {'in process':>19} {'end to end':>19} {'CPU':>5} {'ratio':>7}")
    for entry in results.values():
        if "added" not in entry:
            continue
        cells = []
        for metric in ("in_process", "end_to_end"):
            a = entry["added"][metric]
            cells.append(f"{a['median_ms']:5.1f} [{a['p25_ms']:5.1f},{a['p75_ms']:5.1f}]")
        cpu = entry["added"]["cpu"]["median_ms"]
        ratio = f"×{entry['ratio']:.3f}"
        print(f"{entry['title'][:62]:<62} {cells[0]:>19} {cells[1]:>19} {cpu:5.1f} {ratio:>7}")
    documented = results.get("documented")
    if documented:
        a = documented["added"]["in_process"]
        e = documented["added"]["end_to_end"]
        met = "met" if a["median_ms"] <= TARGET_MS else "NOT met"
        print(
            f"\nthe README's call adds {a['median_ms']:.1f} ms in process (95% interval {a['ci95_ms'][0]:.1f} to "
            f"{a['ci95_ms'][1]:.1f}), {e['median_ms']:.1f} ms end to end (95% interval {e['ci95_ms'][0]:.1f} to "
            f"{e['ci95_ms'][1]:.1f}), ×{documented['ratio']:.3f} of a torch boot; target ≤ {TARGET_MS:.0f} ms: {met}"
        )
    print(
        "\nphases, ms (medians; the exit handlers less the baseline's; "
        "activate() enter includes the target parser's import):"
    )
    for name, entry in results.items():
        if "phases_ms" in entry:
            print(f"  {name:<24} " + "   ".join(f"{k} {v:4.1f}" for k, v in entry["phases_ms"].items()))


def set_realtime(options: argparse.Namespace) -> None:
    if options.realtime:
        REALTIME[0] = REALTIME_SNIPPET
    if options.quiet_cpu is None:
        options.quiet_cpu = float("inf") if options.realtime else 0.05


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=21, help="fresh processes per case (default 21)")
    parser.add_argument("--warmup", type=int, default=1, help="rounds run first and not counted (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the order of each round")
    parser.add_argument("--cases", default=",".join(BY_NAME), help=f"comma-separated subset of {', '.join(BY_NAME)}")
    parser.add_argument(
        "--gpu", default="cpu", help='what the targets declare: "cpu" (default), or this machine\'s GPU type'
    )
    parser.add_argument(
        "--quiet-cpu",
        type=float,
        default=None,
        metavar="SHARE",
        help="take a sample again when other processes took more than this share of a core "
        "(0.05; none with --realtime)",
    )
    parser.add_argument(
        "--realtime",
        action="store_true",
        help="measured processes switch to SCHED_FIFO after importing torch (needs root): on a "
        "machine other work keeps busy, each then has a core to itself, though not the caches, "
        "memory or disk",
    )
    parser.add_argument(
        "--quiet-disk",
        type=float,
        default=2.0,
        metavar="MIB",
        help="... or when more than this many MiB were written to disk meanwhile (2)",
    )
    parser.add_argument("--retries", type=int, default=12, help="times a disturbed sample is taken again (12)")
    parser.add_argument(
        "--patience",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="waiting for a quiet machine stops after this long in all (3600)",
    )
    parser.add_argument("--keep", type=Path, help="build the root and targets in this directory and keep them")
    options = parser.parse_args()
    set_realtime(options)
    names = [name for name in options.cases.split(",") if name]
    unknown = [name for name in names if name not in BY_NAME]
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}")
    chosen = [BY_NAME[name] for name in names]
    for case in list(chosen):  # every case is measured against its baseline, in the same rounds
        if case.call is not None and BY_NAME[case.baseline] not in chosen:
            chosen.append(BY_NAME[case.baseline])
    if options.keep:
        options.keep.mkdir(parents=True, exist_ok=True)
        scratch_context = None
        scratch = options.keep.resolve()
    else:
        scratch_context = tempfile.TemporaryDirectory(prefix="boot-overhead-")
        scratch = Path(scratch_context.name)
    load_before = os.getloadavg()[0]
    try:
        root, sha = prepare(scratch, options.gpu)
        quiet = Quiet(options.quiet_cpu, options.quiet_disk, options.retries, options.patience)
        samples = measure(chosen, options.repeats, options.warmup, options.seed, scratch, root, sha, quiet)
    finally:
        if scratch_context is not None:
            scratch_context.cleanup()
    load = (load_before, os.getloadavg()[0])
    results = summarize(samples, options.seed)
    save("boot_overhead", {
        "method": "fresh processes, interleaved in a shuffled order per round; in process: from just after "
                  "`import torch` to the last atexit handler; end to end: to the parent's wait() returning "
                  "(time.time() in both); added = median(case) - median(baseline) of the same run",
        "target_ms": TARGET_MS, "repeats": options.repeats, "warmup_rounds": options.warmup, "seed": options.seed,
        "target_gpu": options.gpu, "realtime": options.realtime,
        "load_average": {"before": load[0], "after": load[1]},
        "quiet": {"cpu_share": None if quiet.cpu_share == float("inf") else quiet.cpu_share,
                  "written_mib": quiet.written_mib, "retries": quiet.retries,
                  "patience_s": quiet.patience,
                  "taken_again": quiet.taken_again, "kept_disturbed": quiet.kept_disturbed, "waited_s": quiet.waited},
        "cases": results,
    })  # fmt: skip
    report(results, options.repeats, load, quiet, options.gpu)


if __name__ == "__main__":
    main()
