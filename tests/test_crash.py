"""SIGKILL at any point of a build, a sync, a compaction of journals or a prune: no boot trusts a
partial artifact, nothing published or recorded is lost, and check / ls tell the truth afterwards.

Each sweep runs the operation once to record every line it executes in cachekeeper (and in the
child script itself), then again and again in copies of the same starting root, killed at chosen
lines (tests/kill_at_line.py, through sys.settrace: no hooks in cachekeeper).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import cachekeeper
from cachekeeper import journal
from cachekeeper.check import Status, check
from cachekeeper.doctor import doctor
from cachekeeper.manifest import Manifest, default_url
from cachekeeper.prune import PrunePolicy, execute_prune, plan_prune
from cachekeeper.records import Kind, Record
from cachekeeper.runtime import BUILD, HIT
from cachekeeper.store import DELETING, Root, Roots, iter_sidecars, publish, read_sidecar
from cachekeeper.sync import sync
from cachekeeper.target import load_target

from .helpers import DAY, REPO_ROOT, artifact, folded, put

# Each sweep runs its operation a few dozen times: 4 to 7 s apiece.
pytestmark = pytest.mark.slow

KILLER = REPO_ROOT / "tests" / "kill_at_line.py"
PARTS = 3

BOOT = textwrap.dedent(
    f"""
    import sys
    import cachekeeper

    with cachekeeper.activate(sys.argv[1], layers=["compile"]) as ck:
        use = ck.layers["compile"]
        if sys.argv[2:] == ["discard"]:
            ck.discard()
        elif use.status == "build":
            for i in range({PARTS}):
                (use.path / f"part-{{i}}").write_bytes(b"x" * 100)
            (use.path / "COMPLETE").write_text("done")
    """
)
SYNC = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from cachekeeper.manifest import Manifest, default_url
    from cachekeeper.store import Roots
    from cachekeeper.sync import sync

    roots = Roots.at(Path(sys.argv[1]))
    sync(Manifest.open(default_url(roots)), roots)
    """
)
PRUNE = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from cachekeeper.manifest import Manifest, default_url
    from cachekeeper.prune import PrunePolicy, execute_prune, plan_prune
    from cachekeeper.store import Roots

    roots = Roots.at(Path(sys.argv[1]))
    manifest = Manifest.open(default_url(roots))
    execute_prune(plan_prune(manifest, roots, PrunePolicy.of(older_than=86400)), manifest, roots)
    """
)


def _script(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / f"{name}.py"
    path.write_text(text)
    return path


# Imported before tracing starts: their import is not what the sweeps are about, and slow traced.
PRELOAD = "cachekeeper.manifest,cachekeeper.sync,cachekeeper.prune"


def _trace(tmp_path: Path, script: Path, root: Path, preload: str = "-") -> list[str]:
    trace = tmp_path / f"{script.stem}.trace"
    scratch = tmp_path / "trace-root"
    shutil.copytree(root, scratch)
    subprocess.run([sys.executable, KILLER, "0", trace, preload, script, scratch], check=True, timeout=120)
    shutil.rmtree(scratch)
    return trace.read_text().splitlines()


def _kill_runs(tmp_path: Path, script: Path, template: Path, points: list[int], preload: str = "-") -> list[Path]:
    """One copy of ``template`` per point, each with the script killed at that point."""
    roots = []
    for point in points:
        copy = tmp_path / f"killed-{script.stem}-{point}"
        shutil.copytree(template, copy)
        roots.append(copy)

    def run(args: tuple[int, Path]) -> int:
        point, copy = args
        done = subprocess.run([sys.executable, KILLER, str(point), "-", preload, script, copy], timeout=120)
        return done.returncode

    with ThreadPoolExecutor(4) as pool:
        codes = list(pool.map(run, zip(points, roots, strict=False)))
    assert codes == [-9] * len(points)  # every run died where it was told to
    return roots


def _spread(trace: list[str], first: int, count: int, *, also: tuple[str, ...] = ()) -> list[int]:
    """``count`` kill points spread over trace[first:], plus every line of the functions ``also``
    (1-based, as kill_at_line counts)."""
    span = len(trace) - first
    points = {first + 1 + (span - 1) * i // (count - 1) for i in range(count)}
    points |= {i + 1 for i in range(first, len(trace)) if trace[i].split(":")[-2] in also}
    return sorted(points)


def test_a_builder_killed_anywhere_leaves_nothing_trusted_and_the_next_boot_recovers(tmp_path):
    template = tmp_path / "template"
    boot = _script(tmp_path, "boot", BOOT)
    # An earlier boot on this machine left its fingerprint, so check derives the same key.
    subprocess.run([sys.executable, boot, template, "discard"], check=True, timeout=120)
    target = tmp_path / "cachekeeper.toml"
    target.write_text('[target]\ngpu = "cpu"\nlayers = ["compile"]\n')
    sync(Manifest.open(default_url(Roots.at(template))), Roots.at(template))

    trace = _trace(tmp_path, boot, template)
    claim = next(i for i, line in enumerate(trace) if line.split(":")[-2] == "claim")
    points = _spread(trace, claim, 16, also=("publish",))
    print(f"{len(points)} kill points")
    locations = {trace[p - 1].rsplit(":", 2)[0] + ":" + trace[p - 1].rsplit(":", 1)[1] for p in points}
    assert len(points) >= 20 and len(locations) >= 20
    killed = _kill_runs(tmp_path, boot, template, points)

    outcomes = set()
    for point, root in zip(points, killed, strict=False):
        roots = Roots.at(root)
        manifest = Manifest.open(default_url(roots))
        [report] = check(load_target(target), folded(root, manifest)).layers
        key = str(report.key)
        published = read_sidecar(Root(root), "compile", key)
        artifact_dir = root / "compile" / key
        where = f"killed at line {point} ({trace[point - 1]})"
        if published is not None:
            assert (artifact_dir / "COMPLETE").is_file() and published.files == PARTS + 1, where
            assert report.status is Status.WARM, where
            assert [a.key for a in manifest.artifacts()] == [key], where  # ls lists it
        else:
            assert report.status is Status.COLD, where  # its builder is dead: not "building"
            assert manifest.artifacts() == [], where
        with cachekeeper.activate(root, layers=["compile"]) as ck:
            use = ck.layers["compile"]
            assert str(use.key) == key, where
            if published is not None:
                assert use.status == HIT and (use.path / "COMPLETE").is_file(), where
            else:
                assert use.status == BUILD and not any(p.is_file() for p in use.path.rglob("*")), where
                (use.path / "COMPLETE").write_text("rebuilt")
        assert read_sidecar(Root(root), "compile", key) is not None, where
        outcomes.add(published is not None)
    assert outcomes == {True, False}  # the sweep killed both before and after publishing


def test_a_sync_killed_anywhere_is_finished_by_the_next_with_nothing_lost_or_doubled(tmp_path):
    template = tmp_path / "template"
    for size in (1, 2, 3):
        with cachekeeper.activate(template, layers=["compile"], engine={"size": size}) as ck:
            (ck.layers["compile"].path / "kernel").write_text("k")
    published = {str(key) for key in _published_keys(template)}
    assert len(published) == 3
    script = _script(tmp_path, "sync", SYNC)
    trace = _trace(tmp_path, script, template, PRELOAD)
    start = next(i for i, line in enumerate(trace) if line.split(":")[-2] == "sync")
    points = _spread(trace, start, 8)
    for point, root in zip(points, _kill_runs(tmp_path, script, template, points, PRELOAD), strict=False):
        manifest = Manifest.open(default_url(Roots.at(root)))
        sync(manifest, Roots.at(root))
        assert sync(manifest, Roots.at(root)).records == 0
        assert {a.key for a in manifest.artifacts()} == published, point
        assert manifest.count_events(Kind.PUBLISHED) == 3 and manifest.count_events(Kind.OBSERVED) == 3, point
        assert manifest.count_events(Kind.PUBLISHING) == 0, point


def _published_keys(root: Path) -> list[str]:
    return [record.key for _, record in iter_sidecars(Root(root)) if not isinstance(record, ValueError)]


def test_a_prune_killed_anywhere_never_lies_and_never_removes_a_rebuild(tmp_path):
    template = tmp_path / "template"
    template.mkdir()
    Root(template).initialise()  # a cache root, as the first boot makes it: prune refuses any other
    manifest = Manifest.open(default_url(Roots.at(template)))
    old = [put(template, manifest, f"compile-x-{i:016x}", age_days=10, size=100) for i in range(3)]
    script = _script(tmp_path, "prune", PRUNE)
    trace = _trace(tmp_path, script, template, PRELOAD)
    start = next(i for i, line in enumerate(trace) if line.split(":")[-2] == "execute_prune")
    points = _spread(trace, start, 10)
    for point, root in zip(points, _kill_runs(tmp_path, script, template, points, PRELOAD), strict=False):
        roots = Roots.at(root)
        manifest = Manifest.open(default_url(roots))
        rows = {a.key: a for a in manifest.artifacts(state=None)}
        deleting = {key for _, key in manifest.keys_in_state(DELETING)}
        for record in old:
            sidecar = read_sidecar(Root(root), "compile", record.key)
            if sidecar is not None:  # whatever a boot may trust is whole, and ls lists it
                assert (root / record.relpath / "data").read_bytes() == b"x" * 100, point
                assert record.key in rows, point
            elif record.key in rows:  # ls shows it as being deleted, never as published
                assert record.key in deleting, point
        # A boot rebuilds a key that the killed prune had unpublished, before the next prune.
        rebuilt = None
        for record in old:
            if read_sidecar(Root(root), "compile", record.key) is None:
                rebuilt = artifact(record.key, relpath=record.relpath, created_at=time.time(), last_used_at=time.time())
                shutil.rmtree(root / record.relpath, ignore_errors=True)
                (root / record.relpath).mkdir(parents=True)
                (root / record.relpath / "data").write_bytes(b"new")
                writer = journal.Journal(Root(root))
                writer.append(Record.new(Kind.PUBLISHING, layer="compile", key=record.key, model="org/m", seconds=1.0))
                assert publish(Root(root), rebuilt)
                writer.close()
                break
        sync(manifest, roots)
        execute_prune(plan_prune(manifest, roots, PrunePolicy.of(older_than=DAY)), manifest, roots)
        survivors = {a.key for a in manifest.artifacts(state=None)}
        if rebuilt is None:
            assert survivors == set(), point
        else:
            assert survivors == {rebuilt.key}, point
            assert manifest.artifact(rebuilt.key) is not None
            assert (root / rebuilt.relpath / "data").read_bytes() == b"new", point
            assert read_sidecar(Root(root), "compile", rebuilt.key).created_at == rebuilt.created_at


TIDY = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from cachekeeper.manifest import Manifest, default_url
    from cachekeeper.store import Roots
    from cachekeeper.sync import sync

    roots = Roots.at(Path(sys.argv[1]))
    sync(Manifest.open(default_url(roots)), roots, tidy=True)
    """
)


def _closed_journal(root: Path, records: int, written_at: float) -> set[str]:
    writer = journal.Journal(Root(root))
    made = [Record.new(Kind.MISS, layer="compile", key=f"k{n}", model="org/m") for n in range(records)]
    writer.extend(made)
    writer.close()
    os.utime(writer.path, (written_at, written_at))
    return {record.uid for record in made}


def _uids(root: Path) -> list[str]:
    """Every record uid in the root's journals, folded or not, as many times as it appears."""
    state = root / ".cachekeeper" / "journal"
    return sorted(
        record.uid
        for path in [*state.glob("*.jsonl"), *state.glob("folded/*.jsonl")]
        for record in journal.read_journal(path).records
        if record.kind is not Kind.CLOSED
    )


def test_a_compaction_killed_anywhere_loses_no_record_and_the_next_finishes_it(tmp_path):
    template = tmp_path / "template"
    roots, now = Roots.at(template), time.time()
    roots.main.initialise()
    manifest = Manifest.open(default_url(roots))
    # Journals of two days ago compacted already, then three more of that day folded late, which
    # the compaction merges with them; today's stays as it is.
    uids = set().union(*(_closed_journal(template, 3, now - 2 * DAY) for _ in range(2)))
    sync(manifest, roots, tidy=True)
    uids |= set().union(*(_closed_journal(template, 2, now - 2 * DAY) for _ in range(3)))
    uids |= _closed_journal(template, 2, now)
    sync(manifest, roots)
    manifest.engine.dispose()
    assert _uids(template) == sorted(uids)

    script = _script(tmp_path, "tidy", TIDY)
    preload = PRELOAD + ",cachekeeper.manifest.writes"
    trace = _trace(tmp_path, script, template, preload)
    start = next(i for i, line in enumerate(trace) if line.split(":")[-2] == "compact_folded")
    points = _spread(trace, start, 10, also=("_compact_day",))
    print(f"{len(points)} kill points")
    assert len(points) >= 30
    doubled = 0
    for point, root in zip(points, _kill_runs(tmp_path, script, template, points, preload), strict=False):
        where = f"killed at line {point} ({trace[point - 1]})"
        assert set(_uids(root)) == uids, where  # nothing lost, before anything is finished
        doubled += len(_uids(root)) > len(uids)  # killed between the new file and the old ones' removal
        roots = Roots.at(root)
        manifest = Manifest.open(default_url(roots))
        sync(manifest, roots, tidy=True)
        folded = sorted(path.name for path in (root / ".cachekeeper" / "journal" / "folded").glob("*.jsonl"))
        compacted = [name for name in folded if name.startswith("compacted-")]
        assert len(compacted) == 1 and len(folded) == 2, where  # one file for the day, and today's journal
        assert list(manifest.journal_cursors()) == [folded[-1]], where  # no row of a compacted journal
        assert set(_uids(root)) == uids, where
        assert manifest.count_events(Kind.MISS) == len(uids), where
        # Folding every journal again into a new manifest finds each record exactly once.
        manifest.engine.dispose()
        (root / ".cachekeeper" / "manifest.db").unlink()
        rebuilt, _ = doctor(default_url(roots), roots)
        assert rebuilt.count_events(Kind.MISS) == len(uids), where
        rebuilt.engine.dispose()
    assert doubled >= 3  # the sweep killed it inside the window where records are in two files
