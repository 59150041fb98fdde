"""check(): warm, cold, stale with the reason, building; which facts came from where."""

from __future__ import annotations

import importlib.metadata
import json

import pytest

import cachekeeper
from cachekeeper import facts as f
from cachekeeper.check import Status, check
from cachekeeper.facts import Source
from cachekeeper.leases import leases_for
from cachekeeper.store import Root, publish, scan_contents
from cachekeeper.target import load_target

from .helpers import artifact, folded, make_hf_model, run_cli

TORCH = importlib.metadata.version("torch")


def cpu_target(tmp_path, extra: str = "", packages: str = "") -> cachekeeper.Target:
    path = tmp_path / "cachekeeper.toml"
    path.write_text(f'[target]\ngpu = "cpu"\n{extra}\n[target.packages]\ntorch = "{TORCH}"\n{packages}\n')
    return load_target(path)


def test_before_any_boot_the_key_is_cold_and_unverified(tmp_path, root, manifest):
    report = check(cpu_target(tmp_path), folded(root, manifest))
    [layer] = report.layers
    assert (layer.layer, layer.status) == ("compile", Status.COLD)
    assert not report.ready and report.observation is None
    assert {"python", "triton", "cuda.runtime"} <= set(report.unverified)


def test_after_a_boot_the_target_inherits_what_was_observed_and_is_warm(tmp_path, root, manifest):
    target = cpu_target(tmp_path)
    with cachekeeper.activate(root, target=target) as ck:
        pass
    report = check(target, folded(root, manifest))
    assert report.ready and report.unverified == ()
    assert str(report.layers[0].key) == str(ck.keys["compile"])
    assert report.facts["python"].source is Source.INHERITED
    assert report.facts["torch"].source is Source.DECLARED
    assert report.observation is not None and report.observation.gpu_type == "cpu"


def test_a_newer_vllm_makes_the_layer_stale_and_says_why(tmp_path, root, manifest):
    with cachekeeper.activate(root, target=cpu_target(tmp_path)):
        pass
    report = check(cpu_target(tmp_path, packages='vllm = "0.34.0"'), folded(root, manifest))
    [layer] = report.layers
    assert layer.status is Status.STALE and not report.ready
    assert [(c.name, c.old, c.new) for c in layer.changes] == [("vllm", f.NONE, "0.34.0")]
    assert layer.nearest is not None and layer.nearest != str(layer.key)


def test_a_key_being_built_is_building(tmp_path, root, manifest):
    target = cpu_target(tmp_path)
    with cachekeeper.activate(root, target=target) as ck:
        ck.discard()
    check(target, folded(root, manifest))  # folds the observation so the key is the same
    lease = leases_for(Root(root), manifest).acquire("compile", str(ck.keys["compile"]))
    try:
        assert check(target, folded(root, manifest)).layers[0].status is Status.BUILDING
    finally:
        lease.release()


def test_weights_are_checked_by_resolved_sha(tmp_path, root, manifest):
    sha = make_hf_model(root / "weights", "org/model", {"config.json": b"{}"})
    target = cpu_target(tmp_path, extra='model = "org/model"\nlayers = ["weights"]')
    assert check(target, folded(root, manifest)).layers[0].status is Status.COLD
    with cachekeeper.activate(root, target=target):
        pass
    report = check(target, folded(root, manifest))
    assert report.ready and report.facts["model.revision"].value == sha
    assert report.facts["model.revision"].source is Source.RESOLVED
    newer = make_hf_model(root / "weights", "org/model", {"config.json": b'{"v": 2}'}, sha="e" * 40)
    stale = check(target, folded(root, manifest)).layers[0]
    assert stale.status is Status.STALE
    assert [(c.name, c.old, c.new) for c in stale.changes] == [("model.revision", sha, newer)]


def test_a_gpu_target_without_observations_is_cold_with_what_is_missing(tmp_path, root, manifest):
    path = tmp_path / "cachekeeper.toml"
    path.write_text('[target]\ngpu = "H100"\n[target.packages]\nvllm = "0.33.0"\n')
    report = check(load_target(path), folded(root, manifest))
    assert report.layers[0].status is Status.COLD
    assert {"gpu.name", "driver.branch"} <= set(report.unverified)
    assert str(report.layers[0].key).startswith("compile-sm90-vllm0.33.0-")


@pytest.mark.parametrize("layers", ['["snapshot"]', '["compile", "snapshot"]'])
def test_snapshot_layers_are_checked_when_asked_for(tmp_path, root, manifest, layers):
    report = check(cpu_target(tmp_path, extra=f"layers = {layers}"), folded(root, manifest))
    assert [layer.layer for layer in report.layers][-1] == "snapshot"


def _vllm_target(tmp_path, name: str, engine: str) -> cachekeeper.Target:
    path = tmp_path / f"{name}.toml"
    path.write_text(
        '[target]\ngpu = "H100"\nlayers = ["compile", "snapshot"]\n[target.packages]\nvllm = "0.33.0"\n'
        f"[target.engine]\nmax_model_len = 4096\n{engine}\n"
    )
    return load_target(path)


@pytest.mark.slow
def test_memory_settings_leave_the_compile_layer_warm_and_make_the_snapshot_cold(tmp_path, root):
    """vLLM 0.33's hash ignores gpu_memory_utilization (it only sizes memory) and covers
    max_num_batched_tokens: `cachekeeper check` says the same. (Not warm is "stale" here, with the
    fact that changed, since an artifact of the layer exists under another key.)"""
    deployed = _vllm_target(tmp_path, "deployed", "gpu_memory_utilization = 0.9")
    cache = cachekeeper.open_cache(root)
    landings = check(deployed, cache).layers  # "H100" may land on an H200: one artifact per distinct key
    for layer in {(each.layer, str(each.key)): each for each in landings}.values():
        directory = root / layer.layer / str(layer.key)
        directory.mkdir(parents=True)
        (directory / "built").write_bytes(b"x" * 10)
        record = artifact(
            str(layer.key),
            layer=layer.layer,
            model=f.NONE,
            relpath=f"{layer.layer}/{layer.key}",
            facts=layer.key.facts.values(),
        )
        publish(Root(root), record, scan_contents(directory))
        cache.manifest.record_artifact(record)
    _vllm_target(tmp_path, "memory", "gpu_memory_utilization = 0.5")
    _vllm_target(tmp_path, "batch", "gpu_memory_utilization = 0.9\nmax_num_batched_tokens = 4096")

    def statuses(name: str) -> dict[str, tuple[str, list[str]]]:
        ran = run_cli("--root", str(root), "check", "--json", "--target", str(tmp_path / f"{name}.toml"))
        assert ran.returncode in (0, 1), ran.stderr
        layers = json.loads(ran.stdout)["layers"]
        return {x["layer"]: (x["status"], [change["fact"] for change in x["changes"]]) for x in layers}

    assert statuses("deployed") == {"compile": ("warm", []), "snapshot": ("warm", [])}
    assert statuses("memory") == {
        "compile": ("warm", []),
        "snapshot": ("stale", ["engine.gpu_memory_utilization"]),
    }
    assert statuses("batch") == {
        "compile": ("stale", ["engine.max_num_batched_tokens"]),
        "snapshot": ("stale", ["engine.max_num_batched_tokens"]),
    }
