"""Uses and the runtime's housekeeping hooks: a boot's artifacts stay in use until its process
exits, a failed boot uses nothing, a snapshot records what it was built from, and the records of
stopped processes are removed by the next tidying sync."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

import cachekeeper
from cachekeeper import uses
from cachekeeper.store import Root, Roots, read_checksums, read_sidecar
from cachekeeper.sync import sync

from .helpers import REPO_ROOT, make_hf_model, tree


@pytest.fixture(autouse=True)
def no_uses_left():
    yield
    uses.release_all()


def owners(root, layer, key):
    return [use.owner for use in uses.users(Root(root), layer, str(key))]


def test_a_boot_uses_its_artifacts_after_the_block_until_released(root):
    with cachekeeper.activate(root) as ck:
        (ck.layers["compile"].path / "inductor" / "k").write_bytes(b"x")
    key = ck.keys["compile"]
    assert len(owners(root, "compile", key)) == 1
    uses.release_all()
    assert owners(root, "compile", key) == []


def test_a_failed_boot_uses_nothing(root):
    with pytest.raises(RuntimeError):
        with cachekeeper.activate(root) as ck:
            assert owners(root, "compile", ck.keys["compile"])
            raise RuntimeError("boom")
    assert owners(root, "compile", ck.keys["compile"]) == []


def test_two_boots_in_one_process_hold_one_use_until_both_are_released(root):
    first = uses.register(Root(root), "compile", "compile-a-0123456789abcdef")
    second = uses.register(Root(root), "compile", "compile-a-0123456789abcdef")
    first.release()
    assert len(owners(root, "compile", "compile-a-0123456789abcdef")) == 1
    second.release()
    assert owners(root, "compile", "compile-a-0123456789abcdef") == []


def test_a_process_that_exits_releases_its_uses(root):
    code = (
        "import pathlib, cachekeeper;"
        f"ck = cachekeeper.activate(pathlib.Path({str(root)!r})).__enter__();"  # never exited: serving
        "print(ck.keys['compile'])"
    )
    key = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, check=True
    ).stdout.strip()
    assert key and owners(root, "compile", key) == []


def test_a_snapshot_records_the_keys_it_was_built_from_and_every_file_is_checksummed(root):
    sha = make_hf_model(root / "weights", "org/m", {"config.json": b"{}", "w.bin": b"w" * 100})
    with cachekeeper.activate(root, model="org/m", revision=sha, layers=["weights", "compile", "snapshot"]) as ck:
        (ck.layers["snapshot"].path / "image").write_bytes(b"s" * 10)
    snapshot = read_sidecar(Root(root), "snapshot", str(ck.keys["snapshot"]))
    assert snapshot.depends_on == (str(ck.keys["weights"]), str(ck.keys["compile"]))
    assert read_sidecar(Root(root), "compile", str(ck.keys["compile"])).depends_on == ()
    weights = read_sidecar(Root(root), "weights", str(ck.keys["weights"]))
    assert sorted(read_checksums(Root(root), weights).files) == ["config.json", "w.bin"]
    assert read_checksums(Root(root), snapshot).files["image"][0] == 10


# --- forgetting the uses of stopped processes ------------------------------------------------------


def _record(root, layer, key, name, *, owner, expires_at):
    path = Root(root).uses_dir(layer, key) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"owner": owner, "since": 1.0, "expires_at": expires_at}))
    return path


def _exited_pid():
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_the_uses_of_stopped_processes_of_every_key_go_and_nothing_else(root, tmp_path):
    here, now = socket.gethostname(), time.time()
    live = uses.register(Root(root), "compile", "compile-a-0123456789abcdef")
    keys = {f"compile-k{n}-0123456789abcdef" for n in range(3)}
    gone = [
        _record(root, "compile", key, f"{here}-1.json", owner=f"{here}:{_exited_pid()}", expires_at=now + 300)
        for key in sorted(keys)
    ]  # their process is gone from this host
    expired = _record(
        root, "weights", "weights-m-0123456789abcdef", "other-7.json", owner="other:7", expires_at=now - 1
    )
    remote = _record(
        root, "compile", "compile-r-0123456789abcdef", "other-8.json", owner="other:8", expires_at=now + 300
    )
    unreadable = Root(root).uses_dir("compile", "compile-u-0123456789abcdef") / "torn.json"
    unreadable.parent.mkdir(parents=True)
    unreadable.write_text('{"owner": "oth')
    # Links are never followed: not a linked key directory, nor a key directory holding a link
    # (whose records are all kept, dead ones too), nor what they reach.
    outside = tmp_path / "outside"
    dead_outside = _record(outside, "compile", "compile-o-0123456789abcdef", "x-1.json", owner="x:1", expires_at=0)
    beside_link = _record(root, "compile", "compile-l-0123456789abcdef", "y-1.json", owner="y:1", expires_at=0)
    linked_record = beside_link.parent / "x-1.json"
    linked_record.symlink_to(dead_outside)
    linked_key = Root(root).uses_dir("compile", "compile-d-0123456789abcdef")
    linked_key.symlink_to(dead_outside.parent, target_is_directory=True)
    not_a_key = Root(root).state_layer_dir("uses", "compile") / "notes"
    not_a_key.mkdir()
    before = tree(root / ".cachekeeper" / "uses")

    assert uses.forget_stopped(Root(root), now) == len(gone) + 1
    after = tree(root / ".cachekeeper" / "uses")
    assert set(before) - set(after) == {str(p.relative_to(root / ".cachekeeper" / "uses")) for p in [*gone, expired]}
    assert not any(path.parent.exists() for path in [*gone, expired])  # their key directories went too
    assert live.path.exists() and remote.exists() and unreadable.exists() and not_a_key.is_dir()
    assert linked_record.is_symlink() and beside_link.exists() and linked_key.is_symlink() and dead_outside.exists()
    assert owners(root, "compile", "compile-a-0123456789abcdef") == [f"{here}:{os.getpid()}"]
    assert uses.forget_stopped(Root(root), now) == 0


def test_a_tidying_sync_forgets_stopped_uses_and_a_plain_one_does_not(root, manifest):
    record = _record(root, "compile", "compile-a-0123456789abcdef", "other-1.json", owner="other:1", expires_at=1.0)
    assert sync(manifest, Roots.at(root)).tidied is None and record.exists()
    report = sync(manifest, Roots.at(root), tidy=True)
    assert report.tidied.uses == 1 and not record.exists() and not record.parent.exists()
