"""Many processes boot at once on one cold key: one builds, the others wait for it or boot cold,
and nobody ever reads a half-built artifact."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import cachekeeper
from cachekeeper import journal
from cachekeeper.leases import ModalDictLeases
from cachekeeper.records import Kind
from cachekeeper.runtime import BUILD, HIT, PRIVATE
from cachekeeper.store import Root, iter_sidecars

from .modal_double import MemoryDict

PARTS = 20

BOOT = textwrap.dedent(
    f"""
    import json, os, sys, time
    import cachekeeper

    root, go, on_busy = sys.argv[1:4]
    print("ready", flush=True)
    while not os.path.exists(go):
        time.sleep(0.005)
    with cachekeeper.activate(root, layers=["compile"], on_busy=on_busy, wait_timeout=120) as ck:
        use = ck.layers["compile"]
        seen = None
        if use.status == "build":
            for i in range({PARTS}):  # slowly, so that others look while it is half built
                (use.path / f"part-{{i}}").write_bytes(b"x" * 1000)
                time.sleep(0.03)
            (use.path / "COMPLETE").write_text("done")
        elif use.status == "hit":
            seen = sorted(p.name for p in use.path.iterdir() if p.is_file())
    print(json.dumps({{"status": use.status, "seen": seen, "on_busy": on_busy}}))
    """
)
WHOLE = sorted(["COMPLETE", *(f"part-{i}" for i in range(PARTS))])


@pytest.mark.slow
def test_sixteen_processes_on_one_cold_key_build_it_once(root, tmp_path):
    go = tmp_path / "go"
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", BOOT, str(root), str(go), "wait" if i % 2 == 0 else "cold"],
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(16)
    ]
    assert [p.stdout.readline().strip() for p in processes] == ["ready"] * 16
    go.touch()  # all at once
    answers = [json.loads(p.communicate(timeout=180)[0]) for p in processes]
    assert all(p.returncode == 0 for p in processes)

    statuses = [answer["status"] for answer in answers]
    assert statuses.count(BUILD) == 1, statuses
    for answer in answers:
        if answer["status"] == HIT:
            assert answer["seen"] == WHOLE  # a hit always sees the whole artifact
        elif answer["status"] != BUILD:
            assert answer == {"status": PRIVATE, "seen": None, "on_busy": "cold"}  # only if told not to wait
        if answer["on_busy"] == "wait":
            assert answer["status"] in (BUILD, HIT)

    [sidecar] = [record for _, record in iter_sidecars(Root(root))]
    assert sidecar.files == PARTS + 1
    records = [r for path in journal.journal_files(Root(root)) for r in journal.read_journal(path).records]
    assert [r.kind for r in records].count(Kind.PUBLISHED) == 1
    assert [r.kind for r in records].count(Kind.HIT) == statuses.count(HIT)


def test_containers_sharing_a_modal_dict_build_once(root):
    """Threads stand in for containers; their only shared lock is the Dict."""
    server = MemoryDict()
    start = threading.Barrier(6)
    statuses: list[str] = []

    def container():
        leases = ModalDictLeases(server.connection())
        start.wait()
        with cachekeeper.activate(root, layers=["compile"], leases=leases, wait_timeout=60) as ck:
            use = ck.layers["compile"]
            if use.status == BUILD:
                time.sleep(0.5)
                (use.path / "COMPLETE").write_text("done")
            else:
                assert (use.path / "COMPLETE").is_file()
            statuses.append(use.status)

    threads = [threading.Thread(target=container) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [BUILD] + [HIT] * 5
    assert not (root / ".cachekeeper" / "leases").exists()  # no lease files: the Dict held them


def test_a_boot_writes_a_server_manifest_directly_and_never_a_sqlite_one(root, db_url, manifest):
    with cachekeeper.activate(root, layers=["compile"], db=db_url) as ck:
        (ck.layers["compile"].path / "kernel").write_text("k")
    key = str(ck.keys["compile"])
    journals = list(journal.journal_files(Root(root)))
    if manifest.is_server:  # many containers may write it at once: each does, and leases live there too
        assert manifest.artifact(key) is not None and journals == []
        assert manifest.count_events(Kind.PUBLISHED) == 1
    else:  # a SQLite file may sit on a Volume: only its single writer, sync, touches it
        assert manifest.artifact(key) is None and len(journals) == 1
        from cachekeeper.store import Roots
        from cachekeeper.sync import sync

        sync(manifest, Roots.at(root))
        assert manifest.artifact(key) is not None
