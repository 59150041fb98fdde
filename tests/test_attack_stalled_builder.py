"""Attack: a stalled builder (audit finding 9). A builder frozen mid-build (SIGSTOP: a container
paused, a VM migrated, a process swapped out) loses its lease once it has not renewed it for its
TTL; the next boot may take the lease over, but must never remove the directory the stalled
process is still writing into: it boots cold in a private directory. When the stalled builder
wakes, it finds its lease lost and publishes nothing, and none of its files were deleted under
it. The unfinished build is cleared later, by prune's leftovers cleanup, once it has not changed
for LEFTOVER_AGE of the observer's time; then a boot builds. A builder killed on the same machine
is provably gone: the next boot clears and rebuilds at once.

Each case runs with leases in files, and in the manifest's table (SQLite and PostgreSQL).
"""

from __future__ import annotations

import os
import signal
import time

import pytest

import cachekeeper
from cachekeeper import uses
from cachekeeper.leases import DbLeases
from cachekeeper.leftovers import LEFTOVER_AGE, clear_leftovers
from cachekeeper.manifest import Manifest, default_url
from cachekeeper.runtime import BUILD, PRIVATE
from cachekeeper.store import Root, Roots, read_sidecar

from .helpers import Server, run_cli, tree

TTL = 1.0


@pytest.fixture(autouse=True)
def no_uses_left():
    yield
    uses.release_all()


@pytest.fixture(params=["file", "sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def lease_db(request) -> str | None:
    """Where leases live: None for files in the root, else a manifest database's URL."""
    return None if request.param == "file" else request.getfixturevalue(f"{request.param}_url")


def _boot(root, lease_db, *, ttl=TTL, **options):
    leases = DbLeases(Manifest.open(lease_db), ttl) if lease_db else None
    return cachekeeper.activate(root, layers=["compile"], lease_ttl=ttl, leases=leases, **options)


def _manifest(root, lease_db) -> Manifest:
    return Manifest.open(lease_db or default_url(Roots.at(root)))


@pytest.mark.slow
def test_a_stalled_builder_loses_its_lease_but_never_its_files(root, lease_db):
    builder = Server(root, lease_ttl=TTL, db=lease_db)
    try:
        assert builder.status() == "build"
        builder.ask("write 0")
        builder.ask("write 1")
        key, directory = builder.key(), builder.path()
        before = tree(directory)
        os.kill(builder.process.pid, signal.SIGSTOP)  # alive, and frozen mid-build
        try:
            began = time.monotonic()
            with _boot(root, lease_db, wait_timeout=30) as ck:
                use = ck.layers["compile"]
                (use.path / "kernel").write_text("compiled privately")
            # It watched the lease, unchanged, for a TTL of its own time, took it over, and found a
            # directory whose builder may still run: cold, privately, and nothing of it removed.
            assert time.monotonic() - began >= TTL
            assert use.status == PRIVATE and root not in use.path.parents
            assert tree(directory) == before
            assert read_sidecar(Root(root), "compile", key) is None  # a private boot publishes nothing
            # Nor does a prune remove it meanwhile.
            assert run_cli("--root", str(root), "prune", "--older-than", "0s", "--yes").returncode == 0
            assert tree(directory) == before
        finally:
            os.kill(builder.process.pid, signal.SIGCONT)
        builder.ask("write 2")  # it goes on, into its own directory
        assert builder.ask("check")["missing"] == []  # nothing was deleted under it
        assert builder.ask("finish")["published"] == {"compile": False}  # it lost the lease: publishes nothing
        assert read_sidecar(Root(root), "compile", key) is None
        assert (directory / "part-2").is_file()
    finally:
        builder.stop()

    # Gone now. Its unfinished build goes once it has not changed for LEFTOVER_AGE of prune's own
    # time: noted by a first cleanup, cleared by one that comes LEFTOVER_AGE later.
    manifest, roots, now = _manifest(root, lease_db), Roots.at(root), time.time()
    assert clear_leftovers(manifest, roots, now=now).partial_builds == ()
    assert directory.is_dir()
    assert clear_leftovers(manifest, roots, now=now + LEFTOVER_AGE).partial_builds == (f"compile/{key}",)
    assert not directory.exists()
    with _boot(root, lease_db, on_busy="cold") as ck:
        assert ck.layers["compile"].status == BUILD  # and a later boot builds


@pytest.mark.slow
def test_a_boot_that_will_not_wait_leaves_a_stalled_builder_alone(root, lease_db):
    builder = Server(root, lease_ttl=TTL, db=lease_db)
    try:
        builder.ask("write 0")
        before = tree(builder.path())
        os.kill(builder.process.pid, signal.SIGSTOP)
        try:
            time.sleep(TTL * 1.5)  # its lease has not changed for longer than its TTL
            with _boot(root, lease_db, on_busy="cold") as ck:
                # First sight of that lease, by this boot's clock: live.
                assert ck.layers["compile"].status == PRIVATE
            assert tree(builder.path()) == before
        finally:
            os.kill(builder.process.pid, signal.SIGCONT)
        assert builder.ask("check")["missing"] == []
        # Past its own TTL it may not trust its lease (it publishes only if it renewed in time);
        # either way its files stay.
        builder.ask("finish")
        assert builder.ask("check")["missing"] == []
    finally:
        builder.stop()


@pytest.mark.slow
def test_a_builder_killed_on_this_machine_is_proven_gone_and_rebuilt_at_once(root, lease_db):
    builder = Server(root, lease_ttl=600, db=lease_db)  # a TTL nobody waits for: only proof frees it
    try:
        assert builder.status() == "build"
        builder.ask("write 0")
        directory = builder.path()
    finally:
        builder.kill()  # SIGKILL, and reaped
    began = time.monotonic()
    with _boot(root, lease_db, ttl=600, on_busy="cold") as ck:
        use = ck.layers["compile"]
        assert use.status == BUILD and use.path == directory
        assert not (directory / "part-0").exists()  # what the dead builder left was cleared
        (use.path / "kernel").write_text("rebuilt")
    assert time.monotonic() - began < 30  # at once: no TTL waited
    assert read_sidecar(Root(root), "compile", str(ck.keys["compile"])) is not None
