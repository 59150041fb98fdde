"""Broken disks and busy neighbours: a read-only root, a disk that fills up while a boot
publishes, files deleted by another process in the middle of a prune, a boot starting to use an
artifact at any moment of a prune that removes it, and a prune killed while a server uses what it
was removing.

Real file systems: a read-only bind mount and a small tmpfs (both need the right to mount, which
the tests have as root; elsewhere the read-only root falls back to permissions and the full disk
is skipped). The other processes act at chosen lines of cachekeeper's code (adversary.at_line),
so that every moment is tried, not only the ones a scheduler happens to pick.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import cachekeeper
from cachekeeper import uses
from cachekeeper.leftovers import LEFTOVER_AGE, clear_leftovers
from cachekeeper.manifest import Manifest, default_url
from cachekeeper.prune import PrunePolicy, execute_prune, plan_prune
from cachekeeper.runtime import BUILD, HIT, PRIVATE
from cachekeeper.store import DELETING, Root, Roots, read_sidecar
from cachekeeper.verify import verify

from .adversary import at_lines, invoke, read_only, small_disk, snapshot
from .helpers import make_hf_model, put, run_cli

TARGET = '[target]\ngpu = "cpu"\nlayers = ["compile"]\n'
PARTS = {"inductor/a.so": b"a" * 3000, "inductor/b.so": b"b" * 3000, "triton/k.cubin": b"k" * 3000}


def boot(root: Path, **options) -> tuple[str, str]:
    """A boot that builds PARTS when it must; (key, status)."""
    with cachekeeper.activate(root, layers=["compile"], **options) as ck:
        use = ck.layers["compile"]
        if use.status == BUILD:
            for name, content in PARTS.items():
                (use.path / name).parent.mkdir(parents=True, exist_ok=True)
                (use.path / name).write_bytes(content)
    uses.release_all()
    return str(use.key), use.status


def whole(root: Path, key: str) -> bool:
    return all((root / "compile" / key / name).read_bytes() == content for name, content in PARTS.items())


# --- a read-only root ---------------------------------------------------------------------------


def test_a_read_only_root_answers_check_and_ls_and_refuses_every_write_in_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cachekeeper.toml").write_text(TARGET)
    root = tmp_path / "root"
    warm, _ = boot(root)
    assert invoke("--root", str(root), "sync").code == 0
    unsynced, _ = boot(root, engine={"width": 2})  # journaled by its boot, not yet folded in
    before = snapshot(root)
    with read_only(root):
        listed = invoke("--root", str(root), "ls", "--json")
        assert listed.code == 0 and [a["key"] for a in json.loads(listed.out)["artifacts"]] == [warm]
        checked = invoke("--root", str(root), "check", "--json")
        assert checked.code == 0 and json.loads(checked.out)["ready"] is True
        verified = json.loads(invoke("--root", str(root), "verify", "--json").out)
        assert [(f["kind"], f["key"]) for f in verified["findings"]] == [("unindexed", unsynced)]
        for command in ("stats", "weights", ("inspect", warm)):
            assert invoke("--root", str(root), *([command] if isinstance(command, str) else command)).code == 0
        for command in (
            ["sync"],
            ["prune", "--older-than", "0s", "--yes"],
            ["pin", warm],
            ["doctor"],
            ["unquarantine", warm],
        ):
            outcome = invoke("--root", str(root), *command)
            assert outcome.code in (1, 2), (command, outcome)
            outcome.assert_one_line_error()
            assert outcome.code == 2 or (
                str(root) in outcome.err and ("read-only" in outcome.err.lower() or "readonly" in outcome.err)
            ), outcome.err
        # A boot is served: the warm key read-only, nothing written (the test below says more).
        ran = invoke("--root", str(root), "run", "--", "true")
        assert ran.code == 0 and f"compile hit {warm}" in ran.out + ran.err, ran
        assert boot(root) == (warm, HIT)
        # The real command: its warning about the stale manifest is one line, like its errors.
        real = run_cli("--root", str(root), "ls", cwd=tmp_path)
        assert real.returncode == 0 and warm in real.stdout
        assert real.stderr.count("\n") == 1 and "read-only" in real.stderr, real.stderr
    assert snapshot(root) == before


# --- a disk that fills up while a boot publishes ------------------------------------------------


def _fill(directory: Path, leave_pages: int) -> None:
    """Fill the file system, then free ``leave_pages`` pages of it."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * 4096)
        except OSError as error:
            assert error.errno == errno.ENOSPC
    os.truncate(filler, max(0, filler.stat().st_size - leave_pages * 4096))


@pytest.mark.slow
def test_a_disk_full_while_publishing_leaves_nothing_half_published(tmp_path, caplog):
    """tmpfs counts whole pages: with 0 to 3 of them left when the boot publishes, the checksums
    file and then the sidecar run out of space in turn (3 is enough for everything)."""
    outcomes = []
    for free_pages in range(4):
        disk = tmp_path / f"disk-{free_pages}"
        disk.mkdir()
        with small_disk(disk, "1m"):
            outcomes.append(_publish_on_a_full_disk(disk, free_pages, caplog))
    assert outcomes == [False, False, True, True]


def _publish_on_a_full_disk(disk: Path, free_pages: int, caplog) -> bool:
    root = disk / "root"
    # A full disk cannot take the lease's release either: it then expires after its TTL, and the
    # next boot waits for that. One second here.
    with cachekeeper.activate(root, layers=["compile"], lease_ttl=1) as ck:
        use = ck.layers["compile"]
        assert use.status == BUILD
        for name, content in PARTS.items():
            (use.path / name).parent.mkdir(parents=True, exist_ok=True)
            (use.path / name).write_bytes(content)
        _fill(disk, free_pages)
    uses.release_all()  # the boot itself went on: no exception left the block
    key = str(use.key)
    state = root / ".cachekeeper"
    published = read_sidecar(Root(root), "compile", key) is not None
    checksums = list((state / "checksums").rglob("*.json")) if (state / "checksums").exists() else []
    assert [p.name for p in state.rglob("*") if p.name.endswith(".tmp")] == []
    if published:
        assert len(checksums) == 1 and whole(root, key)
    else:
        assert checksums == [] and not Root(root).sidecar_path("compile", key).exists()
        assert "did not publish" in caplog.text and "a later boot builds it again" in caplog.text
    (disk / "filler").unlink()
    manifest = Manifest.open(default_url(Roots.at(root)))
    if not published:
        # The boot that did not publish still runs: its directory is neither used nor cleared under
        # it. The leftovers cleanup clears it once it has not changed for LEFTOVER_AGE of prune's
        # own time (seen once, then LEFTOVER_AGE later).
        assert boot(root) == (key, PRIVATE)
        now = time.time()
        assert clear_leftovers(manifest, Roots.at(root), now=now).partial_builds == ()
        assert clear_leftovers(manifest, Roots.at(root), now=now + LEFTOVER_AGE).partial_builds == (f"compile/{key}",)
    assert boot(root) == (key, HIT if published else BUILD)  # a later boot recovers
    assert invoke("--root", str(root), "sync").code == 0
    assert verify(manifest, Roots.at(root)).ok and [a.key for a in manifest.artifacts()] == [key] and whole(root, key)
    manifest.engine.dispose()
    return published


# --- another process deleting files in the middle of a prune ------------------------------------


def _template(directory: Path, count: int, *, hub: bool = False) -> tuple[Path, list[str]]:
    """A root with ``count`` compile artifacts unused for ten days, and with ``hub`` a Hub revision
    nobody recorded."""
    template = directory / "template"
    template.mkdir()
    Root(template).initialise()  # a cache root, as the first boot makes it: prune refuses any other
    manifest = Manifest.open(default_url(Roots.at(template)))
    keys = [put(template, manifest, f"compile-x-{n:016x}", age_days=10, size=100).key for n in range(count)]
    if hub:
        make_hf_model(template / "weights", "org/untracked", {"config.json": b"{}", "w.bin": b"w" * 100})
    manifest.engine.dispose()
    return template, keys


def _prune(root: Path, manifest: Manifest):
    """Everything unused goes (as with --older-than 0s)."""
    roots = Roots.at(root)
    return execute_prune(plan_prune(manifest, roots, PrunePolicy.of(older_than=0)), manifest, roots)


def _trace(template: Path, tmp_path: Path) -> list[str]:
    """The lines a prune of a copy of ``template`` executes, counted as at_lines counts them. The
    second of two runs: the first in a process also runs one-time setup."""
    lines: list[str] = []
    for attempt in range(2):
        probe = tmp_path / f"probe-{attempt}"
        shutil.copytree(template, probe, symlinks=True)
        manifest = Manifest.open(default_url(Roots.at(probe)))
        lines.clear()
        with at_lines({}, lines):
            _prune(probe, manifest)
        manifest.engine.dispose()
    return lines


def _points(lines: list[str], count: int, *, every_line_of: tuple[str, ...] = ()) -> list[int]:
    """``count`` points spread over the trace, and every line of the functions named."""
    spread = {1 + (len(lines) - 1) * i // (count - 1) for i in range(count)}
    return sorted(spread | {i + 1 for i, line in enumerate(lines) if line.split(":")[1] in every_line_of})


@pytest.mark.slow
def test_files_deleted_by_another_process_at_any_moment_of_a_prune_are_no_error(tmp_path):
    template, keys = _template(tmp_path, 2, hub=True)
    lines = _trace(template, tmp_path)
    first = [i + 1 for i, line in enumerate(lines) if line.split(":")[1] == "_remove_batch"][:25]  # the first removal
    points = sorted(set(_points(lines, 16)) | set(first))
    print(f"{len(points)} moments out of {len(lines)} lines")

    def vandal(root: Path) -> None:
        """What another prune, or a person with rm -rf, does: the files and sidecars go."""
        for part in ("compile", "weights", ".cachekeeper/sidecars", ".cachekeeper/checksums"):
            shutil.rmtree(root / part, ignore_errors=True)

    for point in points:
        root = tmp_path / f"run-{point}"
        shutil.copytree(template, root, symlinks=True)
        manifest = Manifest.open(default_url(Roots.at(root)))
        where = f"files deleted at line {point} ({lines[point - 1]})"
        with at_lines({point: lambda: vandal(root)}):
            result = _prune(root, manifest)
        assert {a.key for a in result.removed} | {a.key for a, _ in result.skipped} >= set(keys), where
        assert not [why for _, why in result.skipped if "holds its lease" not in why], (where, result.skipped)
        _prune(root, manifest)  # the next prune has nothing left to do, and says nothing is wrong
        assert manifest.artifacts(state=None) == [], where
        assert verify(manifest, Roots.at(root)).ok, where
        manifest.engine.dispose()
        shutil.rmtree(root)


# --- a boot starting to use an artifact at any moment of a prune that removes it ----------------


def _use_file(root: Path, key: str, owner_pid: int) -> Path:
    path = Root(root).uses_dir("compile", key) / f"{socket.gethostname()}-{owner_pid}.json"
    return path


def _register(root: Path, key: str, owner_pid: int) -> None:
    """What a booting process does first: record its use (for a live process: ``owner_pid``)."""
    path = _use_file(root, key, owner_pid)
    path.parent.mkdir(parents=True, exist_ok=True)
    now = time.time()
    path.write_text(json.dumps({"owner": f"{socket.gethostname()}:{owner_pid}", "since": now, "expires_at": now + 300}))


@pytest.fixture
def server():
    """A live process for uses to belong to, as a server that booted from the cache."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    yield process.pid
    process.kill()
    process.wait()


@pytest.mark.slow
def test_a_boot_that_registers_at_any_moment_of_a_prune_either_keeps_its_files_or_never_hits(tmp_path, server):
    """The boot's side of the handshake is register, then read the sidecar: done here at every line
    of the prune in turn. Whenever it reads a sidecar (a hit), its files must survive the prune."""
    template, keys = _template(tmp_path, 1)
    key = keys[0]
    lines = _trace(template, tmp_path)
    removal = [i + 1 for i, line in enumerate(lines) if line.split(":")[1] == "_remove_batch"]
    # Every line of the removal itself and of what it calls to unpublish, look for uses and put
    # back; moments spread over the rest of it.
    window = range(removal[0], removal[-1] + 1)
    close = {
        i
        for i in window
        if lines[i - 1].split(":")[1]
        in ("_remove_batch", "unpublish", "users", "publish", "_write_sidecar", "write_atomically")
    }
    points = sorted(close | set(window[:: max(1, len(window) // 20)]))
    print(f"{len(points)} moments out of {len(window)} lines")
    outcomes = set()
    for point in points:
        root = tmp_path / f"run-{point}"
        shutil.copytree(template, root, symlinks=True)
        manifest = Manifest.open(default_url(Roots.at(root)))
        seen = []

        def boot_starts() -> None:
            _register(root, key, server)
            seen.append(read_sidecar(Root(root), "compile", key) is not None)

        with at_lines({point: boot_starts}):
            result = _prune(root, manifest)
        where = f"a boot registered at line {point} ({lines[point - 1]})"
        if seen == [True]:  # it hit: whatever the prune did, the files and the sidecar are there
            assert whole_put(root, key) and read_sidecar(Root(root), "compile", key) is not None, where
            assert key in {a.key for a in manifest.artifacts()} and not result.removed, where
        # Otherwise it saw no sidecar and builds afresh under the lease: the prune may have gone on,
        # or seen the use in time and put the sidecar back.
        outcomes.add((seen[0], bool(result.removed)))
        _use_file(root, key, server).unlink()
        _prune(root, manifest)
        assert manifest.artifacts(state=None) == [], where  # once unused, it goes
        manifest.engine.dispose()
        shutil.rmtree(root)
    assert outcomes == {(True, False), (False, True), (False, False)}


def _source(trace_line: str) -> str:
    import linecache

    name, _, number = trace_line.split(":")
    return linecache.getline(os.path.join(os.path.dirname(cachekeeper.__file__), name), int(number))


def whole_put(root: Path, key: str) -> bool:
    """An artifact made by helpers.put is whole: its one file of 100 bytes."""
    return (root / "compile" / key / "data").read_bytes() == b"x" * 100


# --- a prune killed while a server uses what it was removing ------------------------------------


def _kill_at(point: int, use_at: int, root: Path, key: str, owner: int, hit_file: Path) -> None:
    """Prune in a child process: a boot registers at line ``use_at``, SIGKILL at line ``point``."""
    pid = os.fork()
    if pid == 0:  # the child never returns into pytest
        try:
            manifest = Manifest.open(default_url(Roots.at(root)))

            def boot_starts() -> None:
                _register(root, key, owner)
                hit_file.write_text(str(read_sidecar(Root(root), "compile", key) is not None))

            with at_lines({use_at: boot_starts, point: lambda: os.kill(os.getpid(), signal.SIGKILL)}):
                _prune(root, manifest)
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, f"the prune was not killed at {point}"


@pytest.mark.slow
def test_a_prune_killed_while_a_server_uses_what_it_removes_leaves_the_files_until_the_server_is_gone(tmp_path, server):
    template, keys = _template(tmp_path, 1)
    key = keys[0]
    lines = _trace(template, tmp_path)
    removing = [i + 1 for i, line in enumerate(lines) if line.split(":")[1] in ("_lease_what_may_go", "_remove_batch")]
    # The boot registers and hits after the prune's first look for uses, as it takes the lease.
    use_at = next(i for i in removing if "leases[root].acquire" in _source(lines[i - 1]))
    points = [p for p in removing if p > use_at] + [p for p in _points(lines, 12) if p > use_at]
    print(f"{len(points)} kill points")
    outcomes = set()
    for point in points:
        root = tmp_path / f"killed-{point}"
        shutil.copytree(template, root, symlinks=True)
        hit_file = tmp_path / f"hit-{point}"
        _kill_at(point, use_at, root, key, server, hit_file)
        hit = hit_file.read_text() == "True"
        where = f"killed at line {point} ({lines[point - 1]})"
        manifest = Manifest.open(default_url(Roots.at(root)))
        rows = {a.key for a in manifest.artifacts(state=None)}
        deleting = {k for _, k in manifest.keys_in_state(DELETING)}
        sidecar = read_sidecar(Root(root), "compile", key)
        # ls never calls published what no boot can use, and lists whatever a boot may use.
        assert (key not in rows or key in deleting or sidecar is not None) and (sidecar is None or key in rows), where
        result = _prune(root, manifest)  # the next prune, while the server lives
        if hit:
            assert whole_put(root, key), where
            assert key not in {a.key for a in result.removed}, where
        _use_file(root, key, server).unlink()  # the server is gone
        _prune(root, manifest)
        assert manifest.artifacts(state=None) == [] and not (root / "compile" / key).exists(), where
        assert verify(manifest, Roots.at(root)).ok, where
        outcomes.add((hit, sidecar is not None))
        manifest.engine.dispose()
        shutil.rmtree(root)
    assert (True, False) in outcomes  # killed after the sidecar went, while the server used it


# --- a prune at any moment of a boot --------------------------------------------------------------


@pytest.mark.slow
def test_a_prune_at_any_moment_of_a_boot_never_removes_what_the_boot_hits(tmp_path):
    """The runtime's side of the handshake: a whole prune of everything unused runs at a line of
    activate() in turn. Whenever the boot reports a hit, the files it uses are all there."""
    template = tmp_path / "template"
    key, _ = boot(template)
    assert invoke("--root", str(template), "sync").code == 0

    def traced(root: Path, actions: dict, lines: list[str] | None = None) -> str:
        with at_lines(actions, lines):
            with cachekeeper.activate(root, layers=["compile"]) as ck:
                status = ck.layers["compile"].status
                if status == BUILD:
                    for name, content in PARTS.items():
                        (ck.layers["compile"].path / name).parent.mkdir(parents=True, exist_ok=True)
                        (ck.layers["compile"].path / name).write_bytes(content)
        return status

    lines: list[str] = []
    for attempt in range(2):  # the second run: the first in a process also runs one-time setup
        probe = tmp_path / f"probe-{attempt}"
        shutil.copytree(template, probe, symlinks=True)
        lines.clear()
        assert traced(probe, {}, lines) == HIT
        uses.release_all()
    claim = [
        i + 1
        for i, line in enumerate(lines)
        if line.split(":")[1] in ("claim", "_look", "register", "add", "read_sidecar")
    ]
    points = sorted(set(claim) | set(_points(lines, 12)))
    print(f"{len(points)} moments out of {len(lines)} lines")
    outcomes = set()
    for point in points:
        root = tmp_path / f"run-{point}"
        shutil.copytree(template, root, symlinks=True)
        manifest = Manifest.open(default_url(Roots.at(root)))
        pruned = []
        status = traced(root, {point: lambda: pruned.extend(a.key for a in _prune(root, manifest).removed)})
        where = f"pruned at line {point} ({lines[point - 1]}): {status}"
        if status == HIT:
            assert whole(root, key) and read_sidecar(Root(root), "compile", key) is not None, where
        outcomes.add((status, bool(pruned)))
        uses.release_all()
        manifest.engine.dispose()
        shutil.rmtree(root)
    assert {(HIT, False), (BUILD, True)} <= outcomes
