"""Build leases: one holder at a time on files, Modal Dicts and the manifest's table; a dead or
stalled holder is taken over, and a stalled holder knows it lost."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from cachekeeper.leases import (
    STALE_AFTER,
    DbLeases,
    FileLeases,
    LeaseInfo,
    ModalDictLeases,
    dead_file_leases,
)
from cachekeeper.liveness import Memory
from cachekeeper.processes import ProcessIdentity, process_gone, this_process
from cachekeeper.store import Root

from .modal_double import MemoryDict

MECHANISMS = ["file", "dict", "db"]


@pytest.fixture
def make_leases(request, root, manifest):
    """A factory of independent clients of one lease store: as separate processes would be."""
    server = MemoryDict()

    def make(kind: str, ttl: float = 60.0):
        if kind == "file":
            return FileLeases(Root(root), ttl)
        if kind == "dict":
            return ModalDictLeases(server.connection(), ttl)
        return DbLeases(manifest, ttl)

    make.server = server
    return make


@pytest.mark.parametrize("kind", MECHANISMS)
def test_one_holder_at_a_time_until_release(kind, make_leases):
    first, second = make_leases(kind), make_leases(kind)
    lease = first.acquire("compile", "compile-a-00000000000000aa")
    assert lease is not None and lease.held()
    assert second.acquire("compile", "compile-a-00000000000000aa") is None
    assert second.holder("compile", "compile-a-00000000000000aa").token == lease.info.token
    other_key = second.acquire("compile", "compile-b-00000000000000bb")
    assert other_key is not None
    lease.release()
    other_key.release()
    assert second.holder("compile", "compile-a-00000000000000aa") is None and not lease.held()
    again = second.acquire("compile", "compile-a-00000000000000aa")
    assert again is not None and again.info.token != lease.info.token
    again.release()


@pytest.mark.parametrize("kind", MECHANISMS)
def test_a_holder_renews_past_its_ttl(kind, make_leases):
    lease = make_leases(kind, ttl=0.45).acquire("compile", "k")
    try:
        time.sleep(1.0)  # more than twice its TTL
        assert lease.held()
        assert make_leases(kind, ttl=0.45).acquire("compile", "k") is None
    finally:
        lease.release()


def test_a_dict_holder_cut_off_loses_its_lease_and_knows_it(make_leases):
    stalled_client = make_leases.server.connection()
    stalled = ModalDictLeases(stalled_client, ttl=0.6).acquire("compile", "k")
    stalled_client.reachable = False  # it can no longer renew, as a frozen container could not
    rival = ModalDictLeases(make_leases.server.connection(), ttl=0.6)
    deadline = time.monotonic() + 10
    taken = None
    while taken is None and time.monotonic() < deadline:
        taken = rival.acquire("compile", "k")
        time.sleep(0.1)
    assert taken is not None
    stalled_client.reachable = True
    assert not stalled.held()
    assert rival.holder("compile", "k").token == taken.info.token
    stalled.release()  # releasing a lost lease must not free the new holder's
    assert rival.holder("compile", "k").token == taken.info.token
    taken.release()


def test_dict_takeover_of_an_expired_lease_has_exactly_one_winner(make_leases):
    cut = make_leases.server.connection()
    ModalDictLeases(cut, ttl=0.3).acquire("compile", "k")
    cut.reachable = False
    time.sleep(0.5)
    start = threading.Barrier(8)
    won = []

    def contend():
        # Each contender waits, watching the lease: it is dead once it has not changed for its TTL
        # of the contender's own time. Then exactly one creates the next generation.
        leases = ModalDictLeases(make_leases.server.connection(), ttl=30)
        start.wait()
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            lease = leases.acquire("compile", "k")
            if lease is not None:
                won.append(lease)
                return
            time.sleep(0.05)

    threads = [threading.Thread(target=contend) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(won) == 1
    won[0].release()


# --- across processes: files and the manifest ---------------------------------------------------

_CHILD = textwrap.dedent(
    """
    import sys, time
    from cachekeeper.leases import DbLeases, FileLeases
    from cachekeeper.manifest import Manifest
    from cachekeeper.store import Root
    kind, where, ttl, start_at = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
    wait = float(sys.argv[5])
    from pathlib import Path
    leases = FileLeases(Root(Path(where)), ttl) if kind == "file" else DbLeases(Manifest.open(where), ttl)
    time.sleep(max(0.0, start_at - time.time()))
    lease = leases.acquire("compile", "k")
    deadline = time.monotonic() + wait  # a waiting process watches the lease by its own clock
    while lease is None and time.monotonic() < deadline:
        time.sleep(0.05)
        lease = leases.acquire("compile", "k")
    print("won" if lease else "lost", flush=True)
    for line in sys.stdin:
        print("held" if lease and lease.held() else "not held", flush=True)
    """
)


def _child(kind: str, where: str, ttl: float, start_at: float = 0.0, wait: float = 0.0) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", _CHILD, kind, where, str(ttl), str(start_at), str(wait)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def _where(kind: str, root, db_url: str) -> str:
    return str(root) if kind == "file" else db_url


@pytest.mark.parametrize("kind", ["file", "db"])
def test_a_holder_killed_on_this_machine_is_taken_over_at_once(kind, make_leases, root, db_url):
    child = _child(kind, _where(kind, root, db_url), ttl=600)
    assert child.stdout.readline().strip() == "won"
    leases = make_leases(kind)
    assert leases.acquire("compile", "k") is None
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert leases.holder("compile", "k") is None  # its process is gone: no need to wait 600 s
    lease = leases.acquire("compile", "k")
    assert lease is not None
    lease.release()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["file", "db"])
def test_a_stalled_holder_is_taken_over_after_its_ttl_and_then_knows_it_lost(kind, make_leases, root, db_url):
    child = _child(kind, _where(kind, root, db_url), ttl=1.0)
    try:
        assert child.stdout.readline().strip() == "won"
        child.send_signal(signal.SIGSTOP)  # alive but frozen: only expiry can free the lease
        # Judged by this observer's clock: a lease file says its holder's TTL, a row does not.
        leases = make_leases(kind, ttl=30 if kind == "file" else 1.0)
        assert leases.acquire("compile", "k") is None
        time.sleep(1.3)
        lease = leases.acquire("compile", "k")
        assert lease is not None
        child.send_signal(signal.SIGCONT)
        child.stdin.write("check\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "not held"
        assert leases.holder("compile", "k").token == lease.info.token and lease.held()
        lease.release()
    finally:
        child.kill()
        child.wait()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["file", "db"])
def test_processes_racing_for_an_expired_lease_have_exactly_one_winner(kind, root, db_url, manifest):
    where = _where(kind, root, db_url)
    holder = _child(kind, where, ttl=0.5)
    assert holder.stdout.readline().strip() == "won"
    holder.send_signal(signal.SIGSTOP)
    start_at = time.time() + 2.5  # after every contender has started
    # Each waits, watching the lease until it has not changed for a TTL of its own time.
    contenders = [_child(kind, where, ttl=0.5 if kind == "db" else 30, start_at=start_at, wait=4) for _ in range(5)]
    try:
        results = [c.stdout.readline().strip() for c in contenders]
        assert sorted(results) == ["lost"] * 4 + ["won"]
    finally:
        for process in (holder, *contenders):
            process.kill()
            process.wait()


def test_only_this_namespace_and_a_dead_pid_count_as_gone():
    me = this_process()
    assert not process_gone(me) and not process_gone(str(me))
    other = me._replace(token="another process")
    assert process_gone(other._replace(started=str(int(me.started) + 1)))  # the pid was reused
    assert not process_gone(other._replace(namespace="pid:[1]", started="1"))  # another container
    assert not process_gone("")
    assert ProcessIdentity.parse(str(me)) == me


def test_prune_removes_dead_leases_of_published_or_long_dead_keys_only(root):
    clock = [1000.0]
    witness = Memory(lambda: clock[0])  # the observer's clock, advanced by hand
    leases = FileLeases(Root(root), ttl=0.3)
    for key in ("published", "recent", "ancient"):
        leases.acquire("compile", key).release()
    alive = leases.acquire("compile", "alive")
    ancient = root / ".cachekeeper" / "leases" / "compile" / "ancient" / "2.lease"
    ancient.write_text(LeaseInfo("h:1", "t", 0.0).to_json())  # never released, holder unknown

    def dead_stacks():
        return sorted(dead_file_leases(Root(root), lambda layer, key: key == "published", witness).stacks)

    try:
        assert dead_stacks() == [("compile", "published")]  # released, and its key published: at once
        time.sleep(0.5)  # the live holder renews meanwhile
        clock[0] += STALE_AFTER
        # Released or unchanged for STALE_AFTER of this observer's time; the live one never.
        assert dead_stacks() == [("compile", "ancient"), ("compile", "published"), ("compile", "recent")]
    finally:
        alive.release()


def test_leases_survive_a_lease_file_damaged_from_outside(root):
    leases = FileLeases(Root(root), ttl=0.5)
    lease = leases.acquire("compile", "k")
    lease.release()
    (root / ".cachekeeper" / "leases" / "compile" / "k" / "1.lease").write_text("garbage")
    assert leases.acquire("compile", "k") is None  # honoured for a TTL from its last change
    time.sleep(0.6)
    taken = leases.acquire("compile", "k")
    assert taken is not None
    assert sorted(os.listdir(root / ".cachekeeper" / "leases" / "compile" / "k")) == ["1.lease", "2.lease"]
    taken.release()
