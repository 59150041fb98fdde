"""Uses and the runtime's housekeeping hooks: a boot's artifacts stay in use until its process
exits, a failed boot uses nothing, and a snapshot records what it was built from."""

from __future__ import annotations

import subprocess
import sys

import pytest

import cachekeeper
from cachekeeper import uses
from cachekeeper.store import Root, read_checksums, read_sidecar

from .helpers import REPO_ROOT, make_hf_model


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
