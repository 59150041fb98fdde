"""vLLM 0.33.0's own hashing, run through tests/vllm_probe.py, agrees with what docs/vllm-facts.md
records. The first run builds .venv-vllm (about 2 minutes, 2.5 GB); later runs take 30-40 s on 2 cores.
Skipped, with the reason, where that venv cannot be made (no registry, CACHEKEEPER_VLLM_ENV=0)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from .vllm_env import PROBE_HOME, run_probe, vllm_python_or_reason
from .vllm_measure import TINY_QWEN2

# Runs vLLM itself: make test-fast leaves it out.
pytestmark = pytest.mark.vllm

BASE, GPU_MEMORY, BATCHED_TOKENS, CPU_OFFLOAD, PORT_AND_ROOT, NO_AOT = range(6)


@pytest.fixture(scope="module")
def answers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    found = vllm_python_or_reason()
    if isinstance(found, str):
        pytest.skip(f"no vLLM venv: {found}")
    model = tmp_path_factory.mktemp("tiny-qwen2")
    (model / "config.json").write_text(json.dumps(TINY_QWEN2))
    # Kept between runs like PROBE_HOME: vLLM's model-info cache lives under the cache root.
    other_root = str(PROBE_HOME / "other-cache-root")
    requests = [
        {"model_dir": str(model)},
        {"model_dir": str(model), "engine": {"gpu_memory_utilization": 0.5}},
        {"model_dir": str(model), "engine": {"max_num_batched_tokens": 4096}},
        {"model_dir": str(model), "engine": {"cpu_offload_gb": 1}},
        {"model_dir": str(model), "env": {"VLLM_PORT": "9000", "VLLM_CACHE_ROOT": other_root}},
        {"model_dir": str(model), "env": {"VLLM_USE_AOT_COMPILE": "0"}},
    ]
    results = run_probe(requests)  # three environments: three worker processes
    for request, result in zip(requests, results, strict=False):
        assert result["ok"], (request, result.get("error"))
    return {"results": results, "other_root": other_root}


def test_it_is_vllm_0_33_that_answers(answers: dict[str, Any]) -> None:
    assert {result["vllm"] for result in answers["results"]} == {"0.33.0"}


def test_memory_settings_leave_the_config_hash_alone(answers: dict[str, Any]) -> None:
    results = answers["results"]
    assert results[GPU_MEMORY]["config_hash"] == results[BASE]["config_hash"]


def test_shapes_and_offload_move_the_config_hash(answers: dict[str, Any]) -> None:
    results = answers["results"]
    assert results[BATCHED_TOKENS]["config_hash"] != results[BASE]["config_hash"]
    assert (
        results[BATCHED_TOKENS]["config_parts"]["scheduler_config"] != results[BASE]["config_parts"]["scheduler_config"]
    )
    # cpu_offload_gb is memory, yet OffloadConfig hashes every field it has.
    assert results[CPU_OFFLOAD]["config_hash"] != results[BASE]["config_hash"]


def test_the_config_hash_is_the_same_in_another_process(answers: dict[str, Any]) -> None:
    results = answers["results"]
    assert results[PORT_AND_ROOT]["config_hash"] == results[BASE]["config_hash"]


def test_port_and_cache_root_are_not_env_hash_factors(answers: dict[str, Any]) -> None:
    results = answers["results"]
    assert results[PORT_AND_ROOT]["env_hash"] == results[BASE]["env_hash"]


def test_turning_aot_compile_off_moves_the_env_hash(answers: dict[str, Any]) -> None:
    results = answers["results"]
    assert results[NO_AOT]["env_hash"] != results[BASE]["env_hash"]
    assert results[NO_AOT]["config_hash"] == results[BASE]["config_hash"]


def test_vllm_resolves_its_caches_under_vllm_cache_root(answers: dict[str, Any]) -> None:
    paths = answers["results"][PORT_AND_ROOT]["paths"]
    root = answers["other_root"]
    assert paths["vllm_cache_root"] == root
    for name in ("torch_compile_cache", "modelinfos", "deep_gemm", "flashinfer_autotune_v1"):
        assert Path(paths[name]).is_relative_to(root), name
    # ... and these do not follow it: they need variables of their own (docs/vllm-facts.md).
    # VLLM_ASSETS_CACHE and VLLM_XLA_CACHE_PATH default to XDG_CACHE_HOME/vllm/..., not to the root.
    for name in (
        "vllm_config_root",
        "vllm_assets_cache",
        "vllm_xla_cache",
        "triton_cache",
        "flashinfer_jit",
        "flashinfer_autotune_v2",
        "outlines",
        "hf_hub_cache",
    ):
        assert not Path(paths[name]).is_relative_to(root), name
