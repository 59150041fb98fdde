"""activate(): hits and misses per layer, publishing on a clean exit only, and no shared writes
while another process builds."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

import cachekeeper
from cachekeeper import journal
from cachekeeper.leases import FileLeases
from cachekeeper.runtime import BUILD, DOWNLOAD, HIT, PRIVATE
from cachekeeper.store import Root, read_sidecar

from .helpers import REPO_ROOT, make_hf_model, tree

COMPILE_VARS = ("VLLM_CACHE_ROOT", "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR", "CUDA_CACHE_PATH")


def test_a_cold_key_is_built_in_place_and_published_then_hit(root):
    with cachekeeper.activate(root) as ck:
        use = ck.layers["compile"]
        assert use.status == BUILD and not ck.hit("compile")
        assert use.path == root / "compile" / str(ck.keys["compile"])
        for variable in COMPILE_VARS:
            assert os.environ[variable].startswith(str(use.path)) and os.path.isdir(os.environ[variable])
        assert read_sidecar(Root(root), "compile", str(use.key)) is None  # not before the exit
        (use.path / "inductor" / "kernel.so").write_bytes(b"x" * 100)
    published = read_sidecar(Root(root), "compile", str(use.key))
    assert (published.bytes, published.files) == (100, 1)
    assert published.facts == use.key.facts.values()
    with cachekeeper.activate(root) as again:
        assert again.hits == {"compile": True} and again.layers["compile"].status == HIT
        assert again.layers["compile"].path == use.path


def test_an_exception_publishes_nothing_and_removes_the_half_build(root):
    before = dict(os.environ)
    with pytest.raises(RuntimeError, match="boom"):
        with cachekeeper.activate(root) as ck:
            (ck.layers["compile"].path / "partial").write_text("half")
            raise RuntimeError("boom")
    key = str(ck.keys["compile"])
    assert read_sidecar(Root(root), "compile", key) is None
    assert not (root / "compile" / key).exists()
    assert dict(os.environ) == before
    assert FileLeases(Root(root)).holder("compile", key) is None


def test_discard_publishes_nothing(root):
    with cachekeeper.activate(root) as ck:
        ck.discard()
    assert read_sidecar(Root(root), "compile", str(ck.keys["compile"])) is None


def test_leftovers_of_a_dead_build_are_never_trusted(root):
    killed = (  # a builder killed mid-build on this machine: provably gone
        "import os, pathlib, signal, cachekeeper\n"
        f"booting = cachekeeper.activate(pathlib.Path({str(root)!r}))\n"
        "ck = booting.__enter__()\n"
        "(ck.layers['compile'].path / 'inductor').mkdir(exist_ok=True)\n"
        "(ck.layers['compile'].path / 'inductor' / 'torn').write_text('from a build that was killed')\n"
        "print(ck.keys['compile'], flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    done = subprocess.run([sys.executable, "-c", killed], capture_output=True, text=True, cwd=REPO_ROOT)
    leftover = root / "compile" / done.stdout.strip() / "inductor"
    assert done.returncode == -signal.SIGKILL and (leftover / "torn").is_file()
    with cachekeeper.activate(root) as ck:
        assert ck.layers["compile"].status == BUILD
        assert not (leftover / "torn").exists()


def test_busy_key_boots_cold_in_a_private_directory(root):
    with cachekeeper.activate(root) as probe:
        probe.discard()
    key = str(probe.keys["compile"])
    lease = FileLeases(Root(root)).acquire("compile", key)
    try:
        with cachekeeper.activate(root, on_busy="cold") as ck:
            use = ck.layers["compile"]
            assert use.status == PRIVATE and root not in use.path.parents
            (use.path / "private-kernel").write_text("mine")
        assert read_sidecar(Root(root), "compile", key) is None
        assert not (root / "compile" / key).exists()
    finally:
        lease.release()


@pytest.mark.slow
def test_a_waiter_uses_what_the_builder_publishes(root):
    with cachekeeper.activate(root) as probe:
        probe.discard()
    key = str(probe.keys["compile"])
    building = threading.Event()

    def builder():
        with cachekeeper.activate(root) as ck:
            assert ck.layers["compile"].status == BUILD
            building.set()
            time.sleep(1.5)

    thread = threading.Thread(target=builder)
    thread.start()
    building.wait(10)
    with cachekeeper.activate(root, wait_timeout=30) as ck:
        assert ck.layers["compile"].status == HIT
    thread.join()
    assert read_sidecar(Root(root), "compile", key) is not None


def test_a_waiter_gives_up_after_its_timeout(root):
    with cachekeeper.activate(root) as probe:
        probe.discard()
    lease = FileLeases(Root(root)).acquire("compile", str(probe.keys["compile"]))
    try:
        started = time.monotonic()
        with cachekeeper.activate(root, wait_timeout=1.0) as ck:
            assert ck.layers["compile"].status == PRIVATE
        assert time.monotonic() - started >= 1.0
    finally:
        lease.release()


def test_a_revision_that_cannot_be_resolved_boots_cold_privately_and_changes_nothing(root, caplog):
    files = tree(root)
    with cachekeeper.activate(root, model="org/model", revision="main") as ck:
        assert {use.status for use in ck.layers.values()} == {PRIVATE}
        assert ck.facts.value("model.revision") == "main"  # as given: vLLM resolves it itself
        assert os.environ["HF_HUB_CACHE"] == str(ck.layers["weights"].path)
    [warning] = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert "pin a 40-character commit sha" in warning and "private directory" in warning
    assert tree(root) == files


def test_weights_keyed_by_the_resolved_sha(root):
    weights = root / "weights"
    sha = make_hf_model(weights, "org/model", {"config.json": b"{}", "model.safetensors": b"w" * 64})
    with cachekeeper.activate(root, model="org/model", revision="main") as ck:
        assert ck.facts.value("model.revision") == sha
        assert ck.layers["weights"].status == DOWNLOAD
        assert os.environ["HF_HUB_CACHE"] == str(weights)
    published = read_sidecar(Root(root), "weights", str(ck.keys["weights"]))
    assert published.relpath == f"weights/models--org--model/snapshots/{sha}"
    assert (published.bytes, published.files) == (66, 2)
    with cachekeeper.activate(root, model="org/model", revision="main") as again:
        assert again.hits == {"weights": True, "compile": True}


def test_activate_hands_back_the_engine_arguments_it_keyed(root):
    sha = make_hf_model(root / "weights", "org/model", {"config.json": b"{}"})
    engine = {"max_model_len": 4096, "compilation_config": {"cudagraph_capture_sizes": [1, 2]}}
    with cachekeeper.activate(root, model="org/model", revision="main", engine=engine) as ck:
        # LLM(**ck.engine_args): the model, the sha its revision resolved to, the engine table.
        assert dict(ck.engine_args) == {"model": "org/model", "revision": sha, **engine}
        assert ck.keys["compile"].facts.value("engine.max_model_len") == 4096
        with pytest.raises(TypeError):
            ck.engine_args["max_model_len"] = 8192  # type: ignore[index]
        ck.engine_args["compilation_config"]["cudagraph_capture_sizes"].append(4)
    assert engine["compilation_config"]["cudagraph_capture_sizes"] == [1, 2]  # a copy
    with cachekeeper.activate(root) as no_model:
        assert dict(no_model.engine_args) == {}
    with pytest.raises(cachekeeper.CachekeeperError, match="revision is not an engine argument"):
        with cachekeeper.activate(root, engine={"revision": "main"}):
            pass


def test_weights_that_never_arrived_are_not_recorded(root):
    with cachekeeper.activate(root, model="org/model", revision="d" * 40, layers=["weights"]) as ck:
        assert ck.layers["weights"].status == DOWNLOAD
    assert read_sidecar(Root(root), "weights", str(ck.keys["weights"])) is None


def test_a_target_that_the_process_contradicts_is_reported_loudly(root, tmp_path, caplog):
    target = tmp_path / "cachekeeper.toml"
    target.write_text('[target]\ngpu = "H100"\n[target.packages]\ntorch = "9.9.9"\n')
    with caplog.at_level(logging.WARNING, logger="cachekeeper"):
        with cachekeeper.activate(root, target=target) as ck:
            pass
    mismatched = {change.name: (change.old, change.new) for change in ck.mismatches}
    assert mismatched["torch"][0] == "9.9.9" and mismatched["gpu.type"] == ("H100", "cpu")
    assert "does not match its target" in caplog.text
    # The key is made of what was observed, never of what the target claimed.
    assert ck.keys["compile"].facts.value("torch") != "9.9.9"


def test_every_boot_journals_what_it_saw(root):
    with cachekeeper.activate(root) as ck:
        pass
    [path] = list(journal.journal_files(Root(root)))
    chunk = journal.read_journal(path)
    assert [r.kind for r in chunk.records] == ["observed", "publishing", "published", "closed"]
    assert chunk.closed and chunk.records[2].key == str(ck.keys["compile"])


def test_a_boot_syncs_its_journal_before_publishing_only(root, monkeypatch):
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(descriptor: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{descriptor}"))
        real_fsync(descriptor)

    monkeypatch.setattr(os, "fsync", fsync)
    with cachekeeper.activate(root) as built:
        (built.layers["compile"].path / "inductor" / "kernel.so").write_bytes(b"x")
    [path] = journal.journal_files(Root(root))
    journal_syncs = [i for i, name in enumerate(synced) if name == str(path)]
    sidecar_syncs = [i for i, name in enumerate(synced) if "sidecars" in name]
    # The intent is on disk before the sidecar: once, not once a record.
    assert len(journal_syncs) == 1 and journal_syncs[0] < min(sidecar_syncs)
    kinds = [record.kind for record in journal.read_journal(path).records]
    assert kinds == ["observed", "publishing", "published", "closed"]

    synced.clear()
    with cachekeeper.activate(root) as warm:
        assert warm.hits == {"compile": True}
    [hit_journal] = [p for p in journal.journal_files(Root(root)) if p != path]
    assert synced == []  # a warm boot syncs nothing
    kinds = [record.kind for record in journal.read_journal(hit_journal).records]
    assert kinds == ["observed", "hit", "closed"]  # every record written all the same


def test_an_unknown_layer_is_a_usage_error(root):
    with pytest.raises(cachekeeper.CachekeeperError, match="unknown layer 'kernels'"):
        with cachekeeper.activate(root, layers=["kernels"]):
            pass
