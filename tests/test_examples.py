"""The examples run as far as they can here: the Modal apps import and construct with the modal
package and no token, and their boot logic runs through ``.local()`` with a tiny torch.compile
model in vLLM's place and the Modal doubles in place of Volumes and the Dict."""

from __future__ import annotations

import importlib.util
import logging
import runpy
import sys

import pytest

import cachekeeper.modal as ckm
from cachekeeper.store import Root, read_sidecar

from .adversary import read_only, snapshot
from .helpers import REPO_ROOT, make_hf_model
from .modal_double import MemoryDict, MemoryVolume

# The examples run for real: the vLLM app alone takes about 25 s.
pytestmark = pytest.mark.slow

MODAL_EXAMPLES = REPO_ROOT / "examples" / "modal"
MODEL = "Qwen/Qwen2.5-0.5B-Instruct"
SHA = "7ae557604adf67be50417f59c2c2f167def9a775"  # the examples' targets pin it


class TinyEngine:
    """A small torch.compile model standing in for vLLM's LLM (and its sleep mode)."""

    def __init__(self, events: list[str] | None = None) -> None:
        import torch

        self.events = [] if events is None else events
        self.model = torch.compile(torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU()))
        with torch.no_grad():
            self.model(torch.randn(2, 8))

    def sleep(self, level: int = 1) -> None:
        self.events.append("sleep")

    def wake_up(self) -> None:
        self.events.append("wake")


@pytest.fixture
def modal_roots(tmp_path, monkeypatch):
    weights, compiled = tmp_path / "vol-weights", tmp_path / "vol-compile"
    make_hf_model(weights / "weights", MODEL, {"config.json": b"{}", "model.safetensors": b"w" * 32}, sha=SHA)
    monkeypatch.setenv("CACHEKEEPER_WEIGHTS_ROOT", str(weights))
    monkeypatch.setenv("CACHEKEEPER_COMPILE_ROOT", str(compiled))
    monkeypatch.setenv("HF_HUB_CACHE", str(weights / "weights"))  # where the deployer resolves "main"
    return weights, compiled


def _load(name: str, monkeypatch):
    spec = importlib.util.spec_from_file_location(f"example_{name}", MODAL_EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    volumes = [MemoryVolume(), MemoryVolume()]
    monkeypatch.setattr(module, "weights_volume", volumes[0])
    monkeypatch.setattr(module, "compile_volume", volumes[1])
    monkeypatch.setattr(module, "leases", MemoryDict())
    monkeypatch.setattr(module, "make_engine", lambda ck: TinyEngine())
    if hasattr(module, "canary_of"):
        monkeypatch.setattr(module, "canary_of", lambda engine: {"text": "Paris", "logprobs": [-0.01]})
    return module, volumes


def test_the_vllm_app_boots_cold_then_warm_and_its_check_says_so(modal_roots, monkeypatch):
    import modal

    app, volumes = _load("vllm_app", monkeypatch)
    assert isinstance(app.app, modal.App) and isinstance(app.Server, modal.Cls)
    assert app.Warmer().cache_hits.local() == {"weights": False, "compile": False}
    assert all(volume.calls[0] == "reload" and volume.calls[-1] == "commit" for volume in volumes)
    weights, compiled = modal_roots
    [key] = [p.name for p in (compiled / "compile").iterdir()]
    assert read_sidecar(Root(compiled), "compile", key) is not None
    assert any((compiled / "compile" / key / "inductor").rglob("*.py"))  # Inductor wrote under the key
    assert (compiled / ".cachekeeper" / "canaries" / "compile" / f"{key}.json").is_file()
    # The deployed Server mounts both Volumes read-only: it hits, and writes nothing there.
    before = {root: snapshot(root) for root in modal_roots}
    with read_only(weights), read_only(compiled):
        assert app.Server().cache_hits.local() == {"weights": True, "compile": True}
    assert {root: snapshot(root) for root in modal_roots} == before
    assert app.Warmer().cache_hits.local() == {"weights": True, "compile": True}
    # This machine is no H100 with vLLM 0.33.0: what it compiled is stale for the deploy, and the
    # check run where the Volumes are says so, while the weights (keyed by model and sha) are warm.
    # The target's "H100" may land on an H200 too: each is checked on its own.
    report = app.cache_report.local()
    assert report == {
        "ready": False,
        "layers": {"weights": "warm", "compile on H100": "stale", "compile on H200": "stale"},
    }


def test_the_snapshot_app_tags_its_image_and_sleeps_and_wakes_around_the_snapshot(modal_roots, monkeypatch, caplog):
    app, _ = _load("snapshot_app", monkeypatch)
    assert app.SNAPSHOT_ENV[ckm.SNAPSHOT_KEY_ENV] == ckm.snapshot_tag(MODAL_EXAMPLES / "snapshot.toml")
    events: list[str] = []
    engine_args = []
    monkeypatch.setattr(app, "make_engine", lambda ck: engine_args.append(dict(ck.engine_args)) or TinyEngine(events))
    with caplog.at_level(logging.ERROR, logger="cachekeeper"):
        status = app.SnapshotServer().status.local()  # runs the snap=True, then the snap=False hook
    assert events == ["sleep", "wake"]
    # What the engine is made from is what the keys were derived from, sleep mode included.
    assert engine_args == [{"model": MODEL, "revision": SHA, "max_model_len": 4096, "enable_sleep_mode": True}]
    assert status["hits"] == {"weights": False, "compile": False}
    assert "does not match" not in caplog.text  # restored where it was snapshotted: quiet


def test_the_modal_apps_import_offline_with_no_hf_cache(tmp_path, monkeypatch):
    """Importing an app is what `modal deploy` does first: its pinned revision needs no Hub."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    for name in ("vllm_app", "snapshot_app"):
        app, _ = _load(name, monkeypatch)
    assert app.SNAPSHOT_ENV[ckm.SNAPSHOT_KEY_ENV].startswith("snapshot-")


def test_the_deploy_gate_warms_up_before_deploying_and_never_deploys_cold():
    spec = importlib.util.spec_from_file_location("deploy_gate", MODAL_EXAMPLES / "deploy_gate.py")
    gate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gate)

    def runner(codes):
        ran = []

        def run(command):
            ran.append(" ".join(command[:3]))
            return codes.get(command[-1], 0) if command[0] == "modal" else 0

        return ran, run

    ran, run = runner({})
    assert gate.gate("app.py", run) == 0
    assert ran == ["modal run app.py::check_cache", "cachekeeper snapshot-tag --target", "modal deploy app.py"]
    checks = iter([1, 0])
    ran, run = [], lambda c: ran.append(c[-1]) or (next(checks) if c[-1].endswith("check_cache") else 0)
    assert gate.gate("app.py", run) == 0 and ran[:3] == ["app.py::check_cache", "app.py::warm", "app.py::check_cache"]
    ran, run = [], lambda c: ran.append(c[-1]) or (1 if c[-1].endswith("check_cache") else 0)
    assert gate.gate("app.py", run) == 1 and "app.py" not in ran  # never `modal deploy`


def test_the_plain_torch_compile_example_builds_then_hits(tmp_path, monkeypatch, capsys):
    script = str(REPO_ROOT / "examples" / "torch_compile.py")
    monkeypatch.setattr(sys, "argv", [script, "--root", str(tmp_path / "ck")])
    for _ in range(2):
        runpy.run_path(script, run_name="__main__")
    first, second = capsys.readouterr().out.splitlines()
    assert first.startswith("compile build") and second.startswith("compile hit")
    [key] = (tmp_path / "ck" / "compile").iterdir()
    assert any((key / "inductor").rglob("*.py"))
