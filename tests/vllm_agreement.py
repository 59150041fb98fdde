"""What tests/test_vllm_agreement.py flips, and the session's one run of vLLM 0.33.0 that answers
for it (conftest.py's ``vllm_measured`` fixture; test_vllm_probe_smoke.py reads the same run).

One probe worker per distinct environment, two at a time: the base environment answers the base,
every engine-argument flip, the extract of vLLM's own lists and the reading of ``vllm serve``
command lines with vLLM's parser; each variable that moves vLLM's key has a process of its own;
the quiet variables share one; and one resolves the cache locations in the environment activate()
makes (activate() itself runs first, in the vLLM venv, without vLLM).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple

import pytest

from cachekeeper.facts import Facts, Source, engine_facts, env_facts
from cachekeeper.keys import derive_key
from cachekeeper.layers import COMPILE, SNAPSHOT, layer_named

from .vllm_env import PROBE, PROBE_HOME, vllm_python_or_reason
from .vllm_measure import TINY_QWEN2, TINY_QWEN2_MOE
from .vllm_side import REPO_ROOT, run_vllm_side

MODEL = "Qwen/Qwen2.5-0.5B-Instruct"
SHA = "7ae557604adf67be50417f59c2c2f167def9a775"
# What a boot on an H100 with vLLM 0.33.0 observes; the flips add engine and env facts to it.
BASE_FACTS: dict[str, Any] = {
    "gpu.type": "H100",
    "gpu.name": "NVIDIA H100 80GB HBM3",
    "gpu.arch": "sm_90",
    "gpu.memory_mib": 81559,
    "gpu.count": 1,
    "driver.version": "580.95.05",
    "driver.branch": "580",
    "cuda.driver": "13.0",
    "cuda.runtime": "12.9",
    "python": "3.12.7",
    "torch": "2.14.0",
    "triton": "3.8.0",
    "vllm": "0.33.0",
    "flashinfer": "0.7.2.post1",
    "model": MODEL,
    "model.revision": SHA,
    "image": "none",
}


class Flip(NamedTuple):
    label: str  # the engine argument or variable flipped
    change: dict[str, Any]  # engine arguments, or variables
    base: Mapping[str, Any] = MappingProxyType({})  # what it is compared against (same kind)
    model: str = "dense"  # the tiny model: "dense" (Qwen2) or "moe" (Qwen2-MoE, for data parallelism)


LORA = {"enable_lora": True}
DP2 = {"data_parallel_size": 2}
NGRAM = {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 3}

ENGINE_FLIPS = [
    # vLLM hashes these: both keys move.
    Flip("max_model_len", {"max_model_len": 1024}),
    Flip("dtype", {"dtype": "float16"}),
    Flip("quantization", {"quantization": "fp8"}),
    Flip("kv_cache_dtype", {"kv_cache_dtype": "fp8"}),
    Flip("block_size", {"block_size": 32}),
    Flip("max_num_batched_tokens", {"max_num_batched_tokens": 4096}),
    Flip("max_num_seqs", {"max_num_seqs": 8}),
    Flip("enforce_eager", {"enforce_eager": True}),
    Flip("tensor_parallel_size", {"tensor_parallel_size": 2}),
    Flip("pipeline_parallel_size", {"pipeline_parallel_size": 2}),
    Flip("data_parallel_size", {"data_parallel_size": 2}),
    Flip("compilation_config.mode", {"compilation_config": {"mode": 0}}),
    Flip("compilation_config.compile_sizes", {"compilation_config": {"compile_sizes": [1, 2]}}),
    Flip("compilation_config.pass_config", {"compilation_config": {"pass_config": {"eliminate_noops": False}}}),
    Flip("max_cudagraph_capture_size", {"max_cudagraph_capture_size": 64}),
    Flip("optimization_level", {"optimization_level": 0}),
    Flip("cpu_offload_gb", {"cpu_offload_gb": 1}),
    Flip("code_revision", {"code_revision": "v2"}),
    Flip("trust_remote_code", {"trust_remote_code": True}),
    Flip("max_logprobs", {"max_logprobs": 5}),
    Flip("speculative_config", {"speculative_config": NGRAM}),
    Flip("hf_overrides", {"hf_overrides": {"rms_norm_eps": 1e-5}}),
    Flip("enable_lora", LORA),
    Flip("max_loras", {**LORA, "max_loras": 4}, LORA),
    Flip("max_lora_rank", {**LORA, "max_lora_rank": 64}, LORA),
    Flip("override_generation_config", {"override_generation_config": {"temperature": 0.5}}),
    Flip("generation_config", {"generation_config": "vllm"}),
    Flip("renderer_num_workers", {"renderer_num_workers": 4}),
    Flip("model_impl", {"model_impl": "transformers"}),
    Flip("disable_sliding_window", {"disable_sliding_window": True}),
    Flip("enable_prompt_embeds", {"enable_prompt_embeds": True}),
    Flip("attention_backend", {"attention_backend": "CPU_ATTN"}),
    Flip("additional_config", {"additional_config": {"anything": 1}}),
    Flip("enable_expert_parallel", {"enable_expert_parallel": True}, model="moe"),
    # vLLM ignores these (0.33.toml's ignored_engine_args, every one): neither key moves.
    Flip("seed", {"seed": 1234}),
    Flip("served_model_name", {"served_model_name": "other-name"}),
    Flip("tokenizer", {"tokenizer": "TOKENIZER_DIR"}),
    Flip("tokenizer_mode", {"tokenizer_mode": "slow"}),
    Flip("tokenizer_revision", {"tokenizer_revision": "v2"}),
    Flip("logprobs_mode", {"logprobs_mode": "raw_logits"}),
    Flip("disable_cascade_attn", {"disable_cascade_attn": True}),
    Flip("mm_processor_cache_gb", {"mm_processor_cache_gb": 1}),
    Flip("gpu_memory_utilization", {"gpu_memory_utilization": 0.5}),
    Flip("kv_cache_memory_bytes", {"kv_cache_memory_bytes": 2**30}),
    Flip("num_gpu_blocks_override", {"num_gpu_blocks_override": 100}),
    Flip("enable_prefix_caching", {"enable_prefix_caching": False}),
    Flip("prefix_caching_hash_algo", {"prefix_caching_hash_algo": "xxhash"}),
    Flip("prefix_cache_retention_interval", {"prefix_cache_retention_interval": 30}),
    Flip("kv_sharing_fast_prefill", {"kv_sharing_fast_prefill": True}),
    Flip("data_parallel_rank", {**DP2, "data_parallel_rank": 1}, {**DP2, "data_parallel_rank": 0}, "moe"),
    Flip("data_parallel_address", {**DP2, "data_parallel_address": "10.1.2.3"}, DP2, "moe"),
    Flip("data_parallel_rpc_port", {**DP2, "data_parallel_rpc_port": 13999}, DP2, "moe"),
    Flip("master_addr", {"master_addr": "10.9.8.7"}),
    Flip("master_port", {"master_port": 29511}),
    Flip("distributed_executor_backend", {"distributed_executor_backend": "uni"}),
    Flip("disable_custom_all_reduce", {"disable_custom_all_reduce": True}),
    Flip("max_parallel_loading_workers", {"max_parallel_loading_workers": 2}),
    Flip("worker_extension_cls", {"worker_extension_cls": "my.Extension"}),
    Flip("load_format", {"load_format": "dummy"}),
    Flip("download_dir", {"download_dir": "/elsewhere/downloads"}),
    Flip("ignore_patterns", {"ignore_patterns": ["*.pt"]}),
    Flip("use_tqdm_on_load", {"use_tqdm_on_load": False}),
    Flip("model_loader_extra_config", {"model_loader_extra_config": {"anything": 1}}),
    Flip("disable_log_stats", {"disable_log_stats": True}),
    Flip("show_hidden_metrics_for_version", {"show_hidden_metrics_for_version": "0.32"}),
    Flip("scheduling_policy", {"scheduling_policy": "priority"}),
    Flip("long_prefill_token_threshold", {"long_prefill_token_threshold": 512}),
    Flip("stream_interval", {"stream_interval": 4}),
    Flip("shutdown_timeout", {"shutdown_timeout": 30}),
    Flip("max_cpu_loras", {**LORA, "max_cpu_loras": 8}, LORA),
    Flip("compilation_config.cache_dir", {"compilation_config": {"cache_dir": "/elsewhere/compile"}}),
    Flip("compilation_config.debug_dump_path", {"compilation_config": {"debug_dump_path": "/elsewhere/dump"}}),
    # vLLM ignores it, cachekeeper does not: see FINER.
    Flip(
        "speculative_config.num_speculative_tokens",
        {"speculative_config": {**NGRAM, "num_speculative_tokens": 5}},
        {"speculative_config": NGRAM},
    ),
]

# Variables vLLM hashes (the env hash; TORCHINDUCTOR_* through Inductor's hash), one process each:
# both keys move. VLLM_DP_RANK moves vLLM's only (see COARSER).
ENV_FLIPS = [
    Flip("VLLM_USE_AOT_COMPILE", {"VLLM_USE_AOT_COMPILE": "0"}),
    Flip("VLLM_USE_STANDALONE_COMPILE", {"VLLM_USE_STANDALONE_COMPILE": "0"}),
    Flip("VLLM_DISABLE_COMPILE_CACHE", {"VLLM_DISABLE_COMPILE_CACHE": "1"}),
    Flip("VLLM_COMPILE_CACHE_SAVE_FORMAT", {"VLLM_COMPILE_CACHE_SAVE_FORMAT": "unpacked"}),
    Flip("VLLM_BATCH_INVARIANT", {"VLLM_BATCH_INVARIANT": "1"}),
    Flip("CUDA_HOME", {"CUDA_HOME": "/usr/local/cuda-13.0"}),
    Flip("NVCC_THREADS", {"NVCC_THREADS": "4"}),
    Flip("TORCHINDUCTOR_MAX_AUTOTUNE", {"TORCHINDUCTOR_MAX_AUTOTUNE": "1"}),
    Flip("VLLM_DP_RANK", {"VLLM_DP_RANK": "1"}),
]
# Variables that leave every vLLM hash alone: vLLM ignores them, does not know them (VLLM_USE_V1,
# VLLM_ATTENTION_BACKEND are gone in 0.33), overwrites them at import (TORCHINDUCTOR_COMPILE_THREADS),
# or they are not vLLM's at all. They are set together in one process, which is as good as one
# process each: every variable is its own factor of the env hash, so none can hide another's
# change (and each costs ~8 s of CPU alone). cachekeeper's key is computed for each one alone.
QUIET_ENV = {
    "VLLM_PORT": "9000",
    "VLLM_HOST_IP": "10.1.2.3",
    "VLLM_NIXL_SIDE_CHANNEL_HOST": "10.1.2.3",
    "VLLM_RPC_BASE_PATH": "/elsewhere/rpc",
    "VLLM_LOGGING_LEVEL": "DEBUG",
    "VLLM_API_KEY": "secret",
    "VLLM_FORCE_AOT_LOAD": "1",
    "VLLM_SERVER_DEV_MODE": "1",
    "VLLM_ENABLE_STARTUP_PLAN": "1",
    "VLLM_RAY_BUNDLE_INDICES": "0,1",
    "VLLM_USE_V1": "0",
    "VLLM_ATTENTION_BACKEND": "FLASH_ATTN",
    "CUDA_VISIBLE_DEVICES": "1",
    "LOCAL_RANK": "1",
    "MAX_JOBS": "4",
    "HF_HOME": "/elsewhere/hf",
    "TORCHINDUCTOR_COMPILE_THREADS": "4",
    # cachekeeper keys these three (FINER):
    "TRITON_PTXAS_PATH": "/usr/local/cuda-13.0/bin/ptxas",
    "TRITON_OVERRIDE_ARCH": "sm90",
    "TORCH_CUDA_ARCH_LIST": "9.0",
}

# Where cachekeeper's compile key moves and vLLM's does not, on purpose (README "Keys" and
# docs/vllm-facts.md say the same). Facts that are no engine argument or variable are finer too:
# the model's commit sha (vLLM hashes the revision's *name*), the driver branch and compute
# capability (vLLM hashes neither), Python, FlashInfer's version.
FINER = {
    "speculative_config.num_speculative_tokens": (
        "vLLM 0.33 leaves it out of its hash, and a cache shared across its values crashes with "
        '"expected size 7==9" (vllm#53366)'
    ),
    "TRITON_PTXAS_PATH": (
        "which ptxas Triton runs changes the cubins it writes into the artifact; no part of vLLM's "
        "key sees it (nor the other Triton tool paths)"
    ),
    "TRITON_OVERRIDE_ARCH": "Triton generates code for that architecture; vLLM's key does not see it",
    "TORCH_CUDA_ARCH_LIST": "the architectures torch builds JIT extensions for; vLLM's key does not see it",
}
# Where vLLM's key moves and cachekeeper's does not, on purpose: values that differ per pod
# (0.33.toml's per_pod_env). Keying them would make every pod cold; leaving them out means that
# vLLM compiles again in its own sub-directory of the artifact, which the boot records as an
# inner_miss (the dynamo#10695 problem, which vLLM has not fixed for these).
COARSER = {
    "VLLM_DP_RANK": "a data-parallel rank given by variable is hashed by vLLM, but differs per pod",
}


def compile_key(engine: Mapping[str, Any], env: Mapping[str, str]) -> str:
    facts = Facts.from_values(BASE_FACTS, Source.OBSERVED).merged([*engine_facts(engine), *env_facts(env)])
    return str(derive_key(layer_named(COMPILE), facts))


def snapshot_key(engine: Mapping[str, Any]) -> str:
    facts = Facts.from_values(BASE_FACTS, Source.OBSERVED).merged(engine_facts(engine))
    return str(derive_key(layer_named(SNAPSHOT), facts))


def vllm_moved(flipped: dict[str, Any], against: dict[str, Any]) -> bool:
    """Whether the parts of vLLM's cache key this machine can compute differ: the config hash, the
    env hash, and Inductor's hash where both answers hold it."""
    for answer in (flipped, against):
        assert answer["ok"], answer.get("error")
    parts = ["config_hash", "env_hash"] + (["inductor_hash"] if "inductor_hash" in flipped else [])
    return any(flipped.get(part) != against.get(part) for part in parts)


# --- the session's one run of the probe ----------------------------------------------------------


# Where the quiet variables also move VLLM_CACHE_ROOT (test_vllm_probe_smoke.py reads the paths):
# kept between runs like PROBE_HOME, since vLLM's model-info cache lives under the cache root.
OTHER_CACHE_ROOT = PROBE_HOME / "other-cache-root"


def measure(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The session's one run (see the module's documentation); skips, or fails under CI, where the
    vLLM venv cannot be made."""
    found = vllm_python_or_reason()
    if isinstance(found, str):
        if os.environ.get("CI"):
            pytest.fail(f"no vLLM venv in CI: {found}")
        pytest.skip(f"no vLLM venv: {found}")
    python = found
    scratch = tmp_path_factory.mktemp("vllm-agreement")
    models = {"dense": scratch / "dense", "moe": scratch / "moe"}
    for name, config in (("dense", TINY_QWEN2), ("moe", TINY_QWEN2_MOE)):
        models[name].mkdir()
        (models[name] / "config.json").write_text(json.dumps(config))
    tokenizer = scratch / "tokenizer"  # vLLM checks that a tokenizer path exists
    tokenizer.mkdir()

    # activate() as a boot in the vLLM venv would, with an empty HOME: the variables it sets.
    home = scratch / "home"
    home.mkdir()
    root = scratch / "cache-root"
    activation = run_vllm_side(python, "activate", str(root), MODEL, SHA, env={"HOME": str(home)})

    requests: list[dict[str, Any]] = []
    index: dict[str, int] = {}

    def ask(request: dict[str, Any]) -> int:
        key = json.dumps(request, sort_keys=True)
        if key not in index:
            index[key] = len(requests)
            requests.append(request)
        return index[key]

    def engine_request(engine: Mapping[str, Any], model: str) -> dict[str, Any]:
        engine = {k: (str(tokenizer) if v == "TOKENIZER_DIR" else v) for k, v in engine.items()}
        return {"model_dir": str(models[model]), "engine": engine}

    def env_request(env: Mapping[str, str]) -> dict[str, Any]:
        # Inductor's hash (~2 s of CPU) only where a variable can reach Inductor's config.
        inductor = any(name.startswith(("TORCH", "TRITON")) for name in env)
        return {"model_dir": str(models["dense"]), "env": dict(env), **({"inductor": True} if inductor else {})}

    base = ask({"model_dir": str(models["dense"]), "inductor": True, "extract": True})
    engine_pairs = [
        (flip, ask(engine_request(flip.change, flip.model)), ask(engine_request(flip.base, flip.model)))
        for flip in ENGINE_FLIPS
    ]
    env_pairs = [(flip, ask(env_request(flip.change)), base) for flip in ENV_FLIPS]
    quiet = ask(env_request({**QUIET_ENV, "VLLM_CACHE_ROOT": str(OTHER_CACHE_ROOT)}))
    # Where vLLM puts its caches once activate() has set the variables, HOME empty; against the
    # same process kind without them (no engine config: only paths and the env hash are wanted).
    bare = ask({})
    located = ask({"env": {**activation["env"], "HOME": str(home)}})
    # vLLM's own parser reads command lines in the base worker, where vLLM is already imported.
    parsing = ask(
        {"call": {"function": "tests.vllm_side:serve_args", "path": str(REPO_ROOT), "args": [SERVE_COMMANDS]}}
    )
    answers = _probe(python, requests)
    return {
        "answers": answers,
        "base": answers[base],
        "engine": [(flip, answers[a], answers[b]) for flip, a, b in engine_pairs],
        "env": [(flip, answers[a], answers[b]) for flip, a, b in env_pairs]
        + [(Flip(name, {name: value}), answers[quiet], answers[base]) for name, value in QUIET_ENV.items()],
        "bare": answers[bare],
        "located": answers[located],
        "activation": activation,
        "home": home,
        "quiet": answers[quiet],
        "other_cache_root": str(OTHER_CACHE_ROOT),
        "serve_args": answers[parsing]["result"],
    }


def _probe(python: Path, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    command = [str(python), str(PROBE), "--home", str(PROBE_HOME)]
    done = subprocess.run(command, input=json.dumps(requests), capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"vllm_probe.py exited {done.returncode}:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout)


SERVE_COMMANDS = [
    ["vllm", "serve", MODEL, "--max-model-len", "8192", "--gpu-memory-utilization", "0.5"],
    ["vllm", "serve", MODEL, "--revision", SHA, "-tp", "2", "--enforce-eager", "--dtype", "float16"],
    ["vllm", "serve", MODEL, "--no-enable-prefix-caching", "--host", "0.0.0.0", "--port", "9000", "--seed", "7"],
    ["vllm", "serve", MODEL, "--compilation-config", '{"cudagraph_capture_sizes": [1, 2, 4], "mode": 3}'],
    ["vllm", "serve", MODEL, "-cc.mode=3", "-cc.compile_sizes=[1,2]", "--kv-cache-dtype=fp8", "-O3"],
    ["vllm", "serve", "--model", MODEL, "--speculative-config", json.dumps(NGRAM), "--max-num-seqs", "8"],
]
