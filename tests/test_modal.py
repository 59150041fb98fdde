"""The Modal seam: Volumes reloaded before a look and committed after a publish (before the lease
goes), Dict leases, snapshot tags from a target alone, no GPU probing in snap=True, and a loud
check after restore. Modal's servers are replaced by tests/modal_double.py, the only fake."""

from __future__ import annotations

import importlib.metadata
import json
import logging
import subprocess
import sys
import textwrap

import pytest

import cachekeeper.modal as ckm
from cachekeeper.errors import SnapshotMismatch
from cachekeeper.leases import ModalDictLeases
from cachekeeper.runtime import BUILD, HIT, PRIVATE
from cachekeeper.store import Root, read_sidecar
from cachekeeper.target import load_target

from .helpers import run_cli, write_target
from .modal_double import MemoryDict, MemoryVolume

TORCH = importlib.metadata.version("torch")


def test_reload_is_retried_while_files_are_open():
    volume = MemoryVolume(open_files=2)
    assert ckm.reload(volume)
    assert volume.calls == ["reload"] * 3


@pytest.mark.slow
def test_a_volume_that_stays_busy_is_not_reloaded_and_the_boot_goes_on(root, caplog):
    volume = MemoryVolume(open_files=100)
    with caplog.at_level(logging.WARNING, logger="cachekeeper"):
        with ckm.activate(root, volumes=[volume], leases=MemoryDict(), layers=["compile"]) as ck:
            assert ck.layers["compile"].status == BUILD
    assert "could not reload a Volume" in caplog.text and "open files" in caplog.text
    assert volume.calls.count("reload") == ckm.RELOAD_ATTEMPTS and volume.calls[-1] == "commit"


def test_publishing_commits_the_volume_before_the_lease_is_released(root):
    server = MemoryDict()
    seen_at_commit = []

    def on_commit():
        key = str(ck.keys["compile"])
        seen_at_commit.append(
            (read_sidecar(Root(root), "compile", key) is not None, ModalDictLeases(server).holder("compile", key))
        )

    volume = MemoryVolume(on_commit=on_commit)
    with ckm.activate(root, volumes=[volume], leases=server, layers=["compile"]) as ck:
        assert volume.calls == ["reload"]  # looked at the Volume's latest state first
        (ck.layers["compile"].path / "kernel").write_text("k")
    [(published, holder)] = seen_at_commit
    assert published and holder is not None  # others could not rebuild in between
    assert ModalDictLeases(server).holder("compile", str(ck.keys["compile"])) is None
    with ckm.activate(root, volumes=[volume], leases=server, layers=["compile"]) as again:
        assert again.layers["compile"].status == HIT


def test_a_waiter_reloads_the_volume_until_it_gives_up(root):
    server = MemoryDict()
    with ckm.activate(root, leases=server, layers=["compile"]) as probe:
        probe.discard()
    lease = ModalDictLeases(server).acquire("compile", str(probe.keys["compile"]))
    volume = MemoryVolume()
    try:
        with ckm.activate(root, volumes=[volume], leases=server, layers=["compile"], wait_timeout=1.0) as ck:
            assert ck.layers["compile"].status == PRIVATE
    finally:
        lease.release()
    assert volume.calls.count("reload") >= 3


SNAP = textwrap.dedent(
    """
    import json, sys
    import cachekeeper.modal as ckm
    with ckm.activate(sys.argv[1], target=sys.argv[2], snap=True, layers=["weights"]) as ck:
        pass
    print(json.dumps({"nvml": "pynvml" in sys.modules, "torch": "torch" in sys.modules,
                      "gpu": ck.facts.value("gpu.type"), "arch": ck.facts.value("gpu.arch"),
                      "mismatches": len(ck.mismatches)}))
    """
)


def test_a_snap_hook_takes_the_gpu_from_the_target_and_never_touches_nvml(root, tmp_path):
    target = write_target(
        tmp_path / "cachekeeper.toml", f'[target]\ngpu = "H100"\nmodel = "org/m"\nrevision = "{"b" * 40}"\n'
    )
    out = subprocess.run(
        [sys.executable, "-c", SNAP, str(root), str(target)], capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout) == {"nvml": False, "torch": False, "gpu": "H100", "arch": "sm_90", "mismatches": 0}


def _target(tmp_path, vllm="0.33.0", name="cachekeeper.toml"):
    return write_target(
        tmp_path / name,
        f'[target]\ngpu = "H100"\nmodel = "org/m"\nrevision = "{"c" * 40}"\n[target.packages]\nvllm = "{vllm}"\n',
    )


def test_the_snapshot_tag_follows_the_target_and_needs_no_gpu(tmp_path):
    tag = ckm.snapshot_tag(_target(tmp_path))
    assert tag.startswith("snapshot-sm90-") and tag == ckm.snapshot_tag(_target(tmp_path, name="same.toml"))
    assert ckm.snapshot_tag(_target(tmp_path, vllm="0.34.0", name="newer.toml")) != tag
    env = ckm.snapshot_env(_target(tmp_path))
    assert env[ckm.SNAPSHOT_KEY_ENV] == tag and json.loads(env[ckm.SNAPSHOT_FACTS_ENV])["vllm"] == "0.33.0"
    result = run_cli("snapshot-tag", "--target", str(_target(tmp_path)))  # "H100" may land on an H200
    assert result.returncode == 0 and result.stdout.splitlines() == [f"H100  {tag}", f"H200  {tag}"]


def test_a_restored_process_that_matches_its_snapshot_passes_quietly(tmp_path, caplog):
    target = write_target(tmp_path / "t.toml", f'[target]\ngpu = "cpu"\n[target.packages]\ntorch = "{TORCH}"\n')
    environ = ckm.snapshot_env(load_target(target))
    with caplog.at_level(logging.ERROR, logger="cachekeeper"):
        assert ckm.verify_restore(environ=environ) == ()
    assert caplog.text == ""


def test_a_restored_process_that_differs_from_its_snapshot_is_loud(tmp_path, caplog):
    target = write_target(tmp_path / "t.toml", '[target]\ngpu = "H100"\n[target.packages]\ntorch = "9.9.9"\n')
    environ = ckm.snapshot_env(load_target(target))
    with caplog.at_level(logging.ERROR, logger="cachekeeper"):
        changes = ckm.verify_restore(environ=environ)
    assert {c.name for c in changes} == {"torch", "gpu.arch", "gpu.count"}
    assert "torch: 9.9.9 → " + TORCH in caplog.text and "Redeploy" in caplog.text
    with pytest.raises(SnapshotMismatch, match=r"gpu\.arch: sm_90 → none"):
        ckm.verify_restore(environ=environ, strict=True)
    with pytest.raises(SnapshotMismatch, match="CACHEKEEPER_SNAPSHOT_FACTS is not set"):
        ckm.verify_restore(environ={})


def test_a_boot_through_the_modal_seam_imports_neither_modal_nor_sqlalchemy_nor_torch(root):
    script = (
        "import sys, cachekeeper.modal as ckm\n"
        "with ckm.activate(sys.argv[1], layers=['compile']):\n"
        "    pass\n"
        "print(sorted(m for m in ('modal', 'sqlalchemy', 'torch', 'vllm') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", script, str(root)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
