"""Real processes that act on one manifest at the same moment, for the concurrency tests.

``run_workers(action, url, [args, ...])`` starts one process per args, lets every one of them
reach the start line, releases them all at once, and returns what each action returned. An
action is a function below, marked ``@action``, taking the database URL and its keyword
arguments; to race something new (build leases, say), add a function and call it by name.

The processes are forked from a server that imported cachekeeper once (multiprocessing's
forkserver), so eight of them start in milliseconds instead of seconds of imports each. They
see the environment of the moment the server started: pass anything a worker needs as arguments.
"""

from __future__ import annotations

import inspect
import multiprocessing
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from typing import Any

ACTIONS: dict[str, Callable[..., Any]] = {}

_CONTEXT = multiprocessing.get_context("forkserver")
# Everything the actions import, so that a worker pays for no import of its own: under load, 32
# workers importing alembic, typer and huggingface_hub at once would take the whole machine.
_CONTEXT.set_forkserver_preload(
    [
        "cachekeeper.manifest",
        "cachekeeper.prune",
        "cachekeeper.cli",
        "cachekeeper.check",
        "cachekeeper.verify",
        "alembic.command",
        "alembic.script",
        "alembic.runtime.migration",
        "huggingface_hub",
        "typer",
        "rich.table",
        "tests.workers",
    ]
)
_START_TIMEOUT = 120.0


def action(function: Callable[..., Any]) -> Callable[..., Any]:
    ACTIONS[function.__name__] = function
    return function


class Workers:
    """Processes released together; ``results()`` waits for all of them and checks they succeeded."""

    def __init__(self, name: str, url: str, args: Sequence[dict[str, Any]]) -> None:
        self._start = _CONTEXT.Barrier(len(args) + 1)
        self._results = _CONTEXT.Queue()
        self.processes = [
            _CONTEXT.Process(target=_work, args=(name, url, arguments, self._start, self._results, index))
            for index, arguments in enumerate(args)
        ]
        for process in self.processes:
            process.start()
        self._start.wait(timeout=_START_TIMEOUT)

    def next_result(self, timeout: float) -> tuple[int, Any]:
        """(worker index, what its action returned or reported), in the order they arrive."""
        index, value, error = self._results.get(timeout=timeout)
        assert error is None, f"worker {index} failed:\n{error}"
        return index, value

    def results(self, timeout: float = 240) -> list[Any]:
        collected = dict(self.next_result(timeout) for _ in self.processes)
        for process in self.processes:
            process.join(timeout)
            assert process.exitcode == 0, f"a worker exited with {process.exitcode}"
        return [collected[index] for index in range(len(self.processes))]

    def kill(self) -> None:
        for process in self.processes:
            if process.is_alive():
                process.kill()
            process.join()


def run_workers(name: str, url: str, args: Sequence[dict[str, Any]], *, timeout: float = 240) -> list[Any]:
    """Run action ``name`` in ``len(args)`` processes released together; their results, in order."""
    workers = Workers(name, url, args)
    try:
        return workers.results(timeout)
    finally:
        workers.kill()


def _work(name: str, url: str, arguments: dict[str, Any], start: Any, results: Any, index: int) -> None:
    start.wait(timeout=_START_TIMEOUT)
    try:
        outcome = ACTIONS[name](url, **arguments)
        for value in outcome if inspect.isgenerator(outcome) else [outcome]:
            results.put((index, value, None))
    except BaseException:
        results.put((index, None, traceback.format_exc()))
        raise


# --- actions: each returns its result, or yields results as it goes ------------------------------


def _artifact(key: str) -> Any:
    from cachekeeper.store import Artifact

    now = time.time()
    return Artifact(
        key=key,
        layer=key.split("-", 1)[0],
        model="org/m",
        relpath=f"{key.split('-', 1)[0]}/{key}",
        bytes=1,
        files=1,
        created_at=now,
        last_used_at=now,
        builder="worker",
        facts={"n": 1},
    )


@action
def open_manifest(url: str) -> str | None:
    """Open the manifest, making or upgrading its schema if needed; the revision it ends at."""
    from cachekeeper.manifest import Manifest

    return Manifest.open(url).current()


@action
def register(url: str, keys: list[str]) -> int:
    """Index one artifact per key, one transaction each; how many this process indexed first."""
    from cachekeeper.manifest import Manifest

    manifest = Manifest.open(url)
    return sum(manifest.record_artifact(_artifact(key)) for key in keys)


@action
def fold(url: str, batches: list[dict[str, Any]]) -> tuple[int, int]:
    """Fold each batch of records and artifacts in its own transaction; (records, artifacts) applied."""
    from cachekeeper.manifest import Manifest
    from cachekeeper.records import Record

    manifest = Manifest.open(url)
    records = artifacts = 0
    for batch in batches:
        parsed = [Record.from_json(record) for record in batch["records"]]
        result = manifest.fold(parsed, [_artifact(key) for key in batch["artifacts"]], batch["cursors"])
        records, artifacts = records + result.records, artifacts + result.artifacts
    return records, artifacts


@action
def prune(url: str, root: str) -> list[str]:
    """Prune everything unused, as ``cachekeeper prune --older-than 0s`` does; the keys it removed."""
    from pathlib import Path

    from cachekeeper.manifest import Manifest
    from cachekeeper.prune import PrunePolicy, execute_prune, plan_prune
    from cachekeeper.store import Roots

    manifest = Manifest.open(url)
    roots = Roots.at(Path(root))
    plan = plan_prune(manifest, roots, PrunePolicy.of(older_than=0), now=time.time() + 1)
    result = execute_prune(plan, manifest, roots)
    # Another prune at work on the same artifact holds its lease or its removal claim.
    expected = ("another prune", "holds its lease")
    assert not [why for _, why in result.skipped if not any(e in why for e in expected)], result.skipped
    return [artifact.key for artifact in result.removed]


@action
def summarise(url: str, before: float) -> int:
    """Summarise the events older than ``before`` into daily counts; how many this process did."""
    from cachekeeper.manifest import Manifest

    return Manifest.open(url).summarise_events(before=before)


@action
def tidy(url: str, root: str, now: float) -> dict[str, Any]:
    """``cachekeeper sync`` at ``now``: fold, then forget stopped uses, compact, summarise."""
    from pathlib import Path

    from cachekeeper.manifest import Manifest
    from cachekeeper.store import Roots
    from cachekeeper.sync import sync

    report = sync(Manifest.open(url), Roots.at(Path(root)), tidy=True, now=now)
    assert report.tidied is not None
    return report.tidied.to_json()


@action
def hold_claim(url: str, key: str) -> Iterator[bool]:
    """Claim ``key`` for removal, say whether it was claimed, and hold the claim until killed."""
    import threading

    from cachekeeper.manifest import Manifest

    with Manifest.open(url).claim_removals([key]) as claimed:
        yield key in claimed
        threading.Event().wait()


# --- load: boots, checks, listings and prunes on one root at once -------------------------------

LOAD_PARTS = 3


def load_content(key: str, part: int) -> bytes:
    """What a load boot writes into part ``part`` of the artifact ``key``: checkable by anyone."""
    return f"{key}:{part}\n".encode() * 200


@action
def boot_loop(url: str, root: str, seconds: float, variants: int, seed: int) -> dict[str, Any]:
    """Boot again and again (compile and snapshot layers, one of ``variants`` engine settings),
    building what is missing; on a hit, check every file of both artifacts while in use, before
    and after a pause. Counts, and every file found missing or changed.

    The engine settings in use shift with time (booters are released together): the first half
    of the variants boots in the first and last quarter of the run, the second half in between.
    So the first half lies idle for half the run, long enough for a prune to remove it however
    slow the machine, and then comes back to be rebuilt."""
    import random
    from pathlib import Path

    import cachekeeper
    from cachekeeper import uses
    from cachekeeper.runtime import BUILD, HIT

    chance = random.Random(seed)
    counts = {"hit": 0, "build": 0, "private": 0, "download": 0}
    damaged: list[str] = []

    def check(use: Any) -> None:
        for part in range(LOAD_PARTS):
            path = use.path / f"part-{part}"
            try:
                content = path.read_bytes()
            except FileNotFoundError:
                damaged.append(f"{use.key}: {path.name} vanished while in use")
                continue
            if content != load_content(str(use.key), part):
                damaged.append(f"{use.key}: {path.name} changed while in use")

    began = time.monotonic()
    while time.monotonic() < began + seconds:
        half = variants // 2
        in_middle = 0.25 <= (time.monotonic() - began) / seconds < 0.75
        engine = {"variant": half * in_middle + chance.randrange(half)}
        with cachekeeper.activate(Path(root), layers=["compile", "snapshot"], engine=engine, wait_timeout=5) as ck:
            for use in ck.layers.values():
                counts[use.status] += 1
                if use.status == BUILD:
                    for part in range(LOAD_PARTS):
                        (use.path / f"part-{part}").write_bytes(load_content(str(use.key), part))
                elif use.status == HIT:
                    check(use)
            time.sleep(chance.uniform(0, 0.1))  # serving
            for use in ck.layers.values():
                if use.status == HIT:
                    check(use)
        for use in ck.layers.values():
            if use.status == HIT:
                check(use)  # still used after the block, until this server stops
        uses.release_all()
        time.sleep(chance.uniform(0, 0.4))  # stopped: nothing of this server is in use
    return {"counts": counts, "damaged": damaged}


@action
def command_loop(url: str, root: str, seconds: float, command: list[str]) -> dict[str, Any]:
    """Run ``cachekeeper --root ROOT COMMAND`` in this process again and again; how often each exit
    code came, how many artifacts its JSON said it removed, and any stderr that was not a plain
    'not ready'."""
    import contextlib
    import io
    import json

    from cachekeeper import cli

    codes: dict[int, int] = {}
    complaints: list[str] = []
    removed = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                cli.main(["--root", root, *command])
            except SystemExit as done:
                code = done.code if isinstance(done.code, int) else 0
        codes[code] = codes.get(code, 0) + 1
        if code not in (0, 1) or err.getvalue().strip():
            complaints.append(f"{command[0]} exited {code}: {err.getvalue().strip()}")
        elif command[0] == "prune":
            removed += len(json.loads(out.getvalue())["removed"])
    return {"codes": codes, "complaints": complaints, "removed": removed}
