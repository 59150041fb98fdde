"""vLLM 0.33.0's own hashing, run through tests/vllm_probe.py, agrees with what docs/vllm-facts.md
records. The probe run is the session's one (conftest.py's vllm_measured, tests/vllm_agreement.py),
shared with tests/test_vllm_agreement.py, which says what it costs. Skipped, with the reason,
where the vLLM venv cannot be made (no registry, CACHEKEEPER_VLLM_ENV=0)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

# Runs vLLM itself: make test-fast leaves it out.
pytestmark = pytest.mark.vllm

BASE, GPU_MEMORY, BATCHED_TOKENS, CPU_OFFLOAD, PORT_AND_ROOT, NO_AOT = range(6)


@pytest.fixture(scope="module")
def answers(vllm_measured: dict[str, Any]) -> dict[str, Any]:
    """The answers this module reads, from the shared run: the base, three engine flips, the quiet
    variables (VLLM_PORT among them, with VLLM_CACHE_ROOT moved), and VLLM_USE_AOT_COMPILE=0."""
    engine = {flip.label: flipped for flip, flipped, _ in vllm_measured["engine"]}
    env = {flip.label: flipped for flip, flipped, _ in vllm_measured["env"]}
    results = [
        vllm_measured["base"],
        engine["gpu_memory_utilization"],
        engine["max_num_batched_tokens"],
        engine["cpu_offload_gb"],
        vllm_measured["quiet"],
        env["VLLM_USE_AOT_COMPILE"],
    ]
    for result in results:
        assert result["ok"], result.get("error")
    return {"results": results, "other_root": vllm_measured["other_cache_root"]}


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
