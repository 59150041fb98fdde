"""Flip engine arguments and environment variables one at a time and ask vLLM 0.33.0 whether its
compile-cache hashes move. The tables in docs/vllm-facts.md come from this script.

    python tests/vllm_measure.py OUT.json [engine|model|env ...] [--isolate]

``--isolate`` runs every request in a process of its own, to check that the probe's batching
gives the same answers. Needs the vLLM venv (tests/vllm_env.py makes it).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

try:
    from .vllm_env import run_probe
except ImportError:  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from vllm_env import run_probe

# A tiny Qwen2: config.json is all vLLM reads to build its config (no weights, no tokenizer).
TINY_QWEN2 = {
    "architectures": ["Qwen2ForCausalLM"],
    "model_type": "qwen2",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "num_hidden_layers": 2,
    "vocab_size": 1024,
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "torch_dtype": "bfloat16",
    "tie_word_embeddings": True,
}


def make_model(directory: Path, **changes: Any) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps({**TINY_QWEN2, **changes}))
    return str(directory)


# (label, engine kwargs flipped, base kwargs it is compared against). Labels name the EngineArgs
# field (what `LLM(**kwargs)` and `vllm serve --flag` take).
ENGINE_FLIPS: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("max_model_len", {"max_model_len": 1024}, {}),
    ("dtype", {"dtype": "float16"}, {}),
    ("dtype (auto spelled out: bfloat16 from config.json)", {"dtype": "bfloat16"}, {}),
    ("quantization", {"quantization": "fp8"}, {}),
    ("kv_cache_dtype", {"kv_cache_dtype": "fp8"}, {}),
    ("block_size", {"block_size": 32}, {}),
    ("max_num_batched_tokens", {"max_num_batched_tokens": 4096}, {}),
    ("max_num_seqs", {"max_num_seqs": 8}, {}),
    ("enforce_eager", {"enforce_eager": True}, {}),
    ("tensor_parallel_size", {"tensor_parallel_size": 2}, {}),
    ("pipeline_parallel_size", {"pipeline_parallel_size": 2}, {}),
    ("compilation_config.cudagraph_capture_sizes", {"compilation_config": {"cudagraph_capture_sizes": [1, 2, 4]}}, {}),
    ("compilation_config.mode", {"compilation_config": {"mode": 0}}, {}),
    ("compilation_config.compile_sizes", {"compilation_config": {"compile_sizes": [1, 2]}}, {}),
    ("compilation_config.cudagraph_mode", {"compilation_config": {"cudagraph_mode": "FULL_DECODE_ONLY"}}, {}),
    ("compilation_config.pass_config", {"compilation_config": {"pass_config": {"eliminate_noops": False}}}, {}),
    ("compilation_config.cache_dir", {"compilation_config": {"cache_dir": "/elsewhere/compile"}}, {}),
    ("compilation_config.debug_dump_path", {"compilation_config": {"debug_dump_path": "/elsewhere/dump"}}, {}),
    ("cudagraph_capture_sizes (top-level flag)", {"cudagraph_capture_sizes": [1, 2, 4]}, {}),
    ("max_cudagraph_capture_size", {"max_cudagraph_capture_size": 64}, {}),
    ("optimization_level", {"optimization_level": 0}, {}),
    ("gpu_memory_utilization", {"gpu_memory_utilization": 0.5}, {}),
    ("kv_cache_memory_bytes", {"kv_cache_memory_bytes": 2**30}, {}),
    ("num_gpu_blocks_override", {"num_gpu_blocks_override": 100}, {}),
    ("cpu_offload_gb", {"cpu_offload_gb": 1}, {}),
    ("enable_sleep_mode", {"enable_sleep_mode": True}, {}),
    ("enable_prefix_caching", {"enable_prefix_caching": False}, {}),
    ("prefix_caching_hash_algo", {"prefix_caching_hash_algo": "xxhash"}, {}),
    ("seed", {"seed": 1234}, {}),
    ("served_model_name", {"served_model_name": "other-name"}, {}),
    ("tokenizer", {"tokenizer": "/elsewhere/tokenizer"}, {}),
    ("tokenizer_mode", {"tokenizer_mode": "slow"}, {}),
    ("tokenizer_revision", {"tokenizer_revision": "v2"}, {}),
    ("revision", {"revision": "v2"}, {}),
    ("code_revision", {"code_revision": "v2"}, {}),
    ("trust_remote_code", {"trust_remote_code": True}, {}),
    ("max_logprobs", {"max_logprobs": 5}, {}),
    ("logprobs_mode", {"logprobs_mode": "raw_logits"}, {}),
    ("disable_log_stats", {"disable_log_stats": True}, {}),
    ("data_parallel_size", {"data_parallel_size": 2}, {}),
    ("data_parallel_address", {"data_parallel_address": "10.1.2.3"}, {}),
    ("data_parallel_rpc_port", {"data_parallel_rpc_port": 13999}, {}),
    ("enable_chunked_prefill", {"enable_chunked_prefill": False}, {}),
    (
        "speculative_config (ngram, vs none)",
        {"speculative_config": {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 3}},
        {},
    ),
    (
        "speculative_config.num_speculative_tokens (ngram 3 -> 5)",
        {"speculative_config": {"method": "ngram", "num_speculative_tokens": 5, "prompt_lookup_max": 3}},
        {"speculative_config": {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 3}},
    ),
    ("hf_overrides (changes a model value)", {"hf_overrides": {"rms_norm_eps": 1e-5}}, {}),
    ("hf_overrides (empty dict)", {"hf_overrides": {}}, {}),
    ("enable_lora", {"enable_lora": True}, {}),
    ("max_loras (with enable_lora)", {"enable_lora": True, "max_loras": 4}, {"enable_lora": True}),
    ("max_lora_rank (with enable_lora)", {"enable_lora": True, "max_lora_rank": 64}, {"enable_lora": True}),
    ("load_format", {"load_format": "dummy"}, {}),
    ("download_dir", {"download_dir": "/elsewhere/downloads"}, {}),
    ("distributed_executor_backend", {"distributed_executor_backend": "uni"}, {}),
    ("disable_custom_all_reduce", {"disable_custom_all_reduce": True}, {}),
    ("override_generation_config", {"override_generation_config": {"temperature": 0.5}}, {}),
    ("generation_config", {"generation_config": "vllm"}, {}),
    ("limit_mm_per_prompt", {"limit_mm_per_prompt": {"image": 0}}, {}),
    ("async_scheduling", {"async_scheduling": True}, {}),
    ("renderer_num_workers", {"renderer_num_workers": 4}, {}),
    ("model_impl", {"model_impl": "transformers"}, {}),
    ("disable_sliding_window", {"disable_sliding_window": True}, {}),
    ("enable_prompt_embeds", {"enable_prompt_embeds": True}, {}),
    ("max_parallel_loading_workers", {"max_parallel_loading_workers": 2}, {}),
    ("scheduling_policy", {"scheduling_policy": "priority"}, {}),
    ("long_prefill_token_threshold", {"long_prefill_token_threshold": 512}, {}),
    ("stream_interval", {"stream_interval": 4}, {}),
    ("kv_sharing_fast_prefill", {"kv_sharing_fast_prefill": True}, {}),
    ("attention_backend", {"attention_backend": "CPU_ATTN"}, {}),
    ("additional_config", {"additional_config": {"anything": 1}}, {}),
    ("shutdown_timeout", {"shutdown_timeout": 30}, {}),
    ("swap_space", {"swap_space": 8}, {}),
    ("max_seq_len_to_capture", {"max_seq_len_to_capture": 4096}, {}),
    ("calculate_kv_scales", {"calculate_kv_scales": True}, {}),
]

# Model-level changes that are not engine arguments: (label, make_model changes, same dir?).
MODEL_FLIPS: list[tuple[str, dict[str, Any]]] = [
    ("the model path string (same config.json in another directory)", {}),
    ("config.json edited (rope_theta)", {"rope_theta": 20000.0}),
    ("config.json edited (an unused key added)", {"some_note": "hello"}),
]

# (label, env set on top of the base; None unsets).
ENV_FLIPS: list[tuple[str, dict[str, str | None]]] = [
    ("VLLM_USE_AOT_COMPILE=0", {"VLLM_USE_AOT_COMPILE": "0"}),
    ("VLLM_USE_AOT_COMPILE=1 (the default, set)", {"VLLM_USE_AOT_COMPILE": "1"}),
    ("VLLM_USE_AOT_COMPILE=true (parsed: only '1' is on)", {"VLLM_USE_AOT_COMPILE": "true"}),
    ("VLLM_USE_STANDALONE_COMPILE=0", {"VLLM_USE_STANDALONE_COMPILE": "0"}),
    ("VLLM_USE_STANDALONE_COMPILE=1 (the default, set)", {"VLLM_USE_STANDALONE_COMPILE": "1"}),
    ("VLLM_DISABLE_COMPILE_CACHE=1", {"VLLM_DISABLE_COMPILE_CACHE": "1"}),
    ("VLLM_DISABLE_COMPILE_CACHE=0 (the default, set)", {"VLLM_DISABLE_COMPILE_CACHE": "0"}),
    ("VLLM_USE_MEGA_AOT_ARTIFACT=0", {"VLLM_USE_MEGA_AOT_ARTIFACT": "0"}),
    ("VLLM_COMPILE_CACHE_SAVE_FORMAT=unpacked", {"VLLM_COMPILE_CACHE_SAVE_FORMAT": "unpacked"}),
    ("VLLM_COMPILE_CACHE_SAVE_FORMAT=binary (the default, set)", {"VLLM_COMPILE_CACHE_SAVE_FORMAT": "binary"}),
    ("VLLM_PP_LAYER_PARTITION=1,1", {"VLLM_PP_LAYER_PARTITION": "1,1"}),
    ("VLLM_BATCH_INVARIANT=1", {"VLLM_BATCH_INVARIANT": "1"}),
    ("VLLM_DP_RANK=1", {"VLLM_DP_RANK": "1"}),
    ("VLLM_USE_V1=0 (unknown to 0.33)", {"VLLM_USE_V1": "0"}),
    ("VLLM_ATTENTION_BACKEND=FLASH_ATTN (unknown to 0.33)", {"VLLM_ATTENTION_BACKEND": "FLASH_ATTN"}),
    ("VLLM_CACHE_ROOT", {"VLLM_CACHE_ROOT": "/elsewhere/vllm-cache"}),
    ("VLLM_CONFIG_ROOT", {"VLLM_CONFIG_ROOT": "/elsewhere/vllm-config"}),
    ("VLLM_ASSETS_CACHE", {"VLLM_ASSETS_CACHE": "/elsewhere/assets"}),
    ("VLLM_XLA_CACHE_PATH", {"VLLM_XLA_CACHE_PATH": "/elsewhere/xla"}),
    ("VLLM_RPC_BASE_PATH", {"VLLM_RPC_BASE_PATH": "/elsewhere/rpc"}),
    ("VLLM_FLASHINFER_AUTOTUNE_CACHE_DIR", {"VLLM_FLASHINFER_AUTOTUNE_CACHE_DIR": "/elsewhere/fi-autotune"}),
    ("VLLM_PORT", {"VLLM_PORT": "9000"}),
    ("VLLM_HOST_IP", {"VLLM_HOST_IP": "10.1.2.3"}),
    ("VLLM_NIXL_SIDE_CHANNEL_HOST", {"VLLM_NIXL_SIDE_CHANNEL_HOST": "10.1.2.3"}),
    ("MOONCAKE_REQUESTER_LOCAL_HOSTNAME", {"MOONCAKE_REQUESTER_LOCAL_HOSTNAME": "pod-7"}),
    ("VLLM_LOGGING_LEVEL", {"VLLM_LOGGING_LEVEL": "DEBUG"}),
    ("VLLM_API_KEY", {"VLLM_API_KEY": "secret"}),
    ("VLLM_FORCE_AOT_LOAD", {"VLLM_FORCE_AOT_LOAD": "1"}),
    ("VLLM_WORKER_MULTIPROC_METHOD", {"VLLM_WORKER_MULTIPROC_METHOD": "fork"}),
    ("VLLM_RPC_TIMEOUT", {"VLLM_RPC_TIMEOUT": "20000"}),
    ("VLLM_ENABLE_V1_MULTIPROCESSING=0", {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}),
    ("VLLM_SERVER_DEV_MODE=1", {"VLLM_SERVER_DEV_MODE": "1"}),
    ("VLLM_ENABLE_STARTUP_PLAN=1", {"VLLM_ENABLE_STARTUP_PLAN": "1"}),
    ("CUDA_VISIBLE_DEVICES", {"CUDA_VISIBLE_DEVICES": "1"}),
    ("LOCAL_RANK", {"LOCAL_RANK": "1"}),
    ("CUDA_HOME", {"CUDA_HOME": "/usr/local/cuda-13.0"}),
    ("MAX_JOBS", {"MAX_JOBS": "4"}),
    ("NVCC_THREADS", {"NVCC_THREADS": "4"}),
    ("LD_LIBRARY_PATH", {"LD_LIBRARY_PATH": "/opt/lib"}),
    ("RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES", {"RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES": "1"}),
    ("HF_HUB_OFFLINE=0", {"HF_HUB_OFFLINE": "0"}),
    ("HF_HOME", {"HF_HOME": "/elsewhere/hf"}),
    ("TORCHINDUCTOR_CACHE_DIR", {"TORCHINDUCTOR_CACHE_DIR": "/elsewhere/inductor"}),
    ("TORCHINDUCTOR_COMPILE_THREADS", {"TORCHINDUCTOR_COMPILE_THREADS": "4"}),
    ("TORCHINDUCTOR_MAX_AUTOTUNE=1", {"TORCHINDUCTOR_MAX_AUTOTUNE": "1"}),
    ("TRITON_CACHE_DIR", {"TRITON_CACHE_DIR": "/elsewhere/triton"}),
    ("TRITON_HOME", {"TRITON_HOME": "/elsewhere/triton-home"}),
    ("TORCH_EXTENSIONS_DIR", {"TORCH_EXTENSIONS_DIR": "/elsewhere/torch-ext"}),
    ("FLASHINFER_WORKSPACE_BASE", {"FLASHINFER_WORKSPACE_BASE": "/elsewhere/fi"}),
    ("NCCL_DEBUG", {"NCCL_DEBUG": "INFO"}),
    ("XDG_CACHE_HOME", {"XDG_CACHE_HOME": "/elsewhere/xdg-cache"}),
    ("XDG_CONFIG_HOME", {"XDG_CONFIG_HOME": "/elsewhere/xdg-config"}),
    ("HOME", {"HOME": "/elsewhere/home"}),
    ("TMPDIR", {"TMPDIR": "/elsewhere/tmp"}),
]


# A tiny Qwen2-MoE: vLLM refuses data_parallel_rank on a dense model ("external DP" needs MoE).
TINY_QWEN2_MOE = {
    **TINY_QWEN2,
    "architectures": ["Qwen2MoeForCausalLM"],
    "model_type": "qwen2_moe",
    "moe_intermediate_size": 32,
    "shared_expert_intermediate_size": 64,
    "num_experts": 4,
    "num_experts_per_tok": 2,
    "decoder_sparse_step": 1,
}

# Flips on the MoE model: (label, engine, against).
MOE_FLIPS: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    (
        "data_parallel_rank (MoE, data_parallel_size=2: rank 1 vs rank 0)",
        {"data_parallel_size": 2, "data_parallel_rank": 1},
        {"data_parallel_size": 2, "data_parallel_rank": 0},
    ),
    (
        "data_parallel_address (MoE, data_parallel_size=2)",
        {"data_parallel_size": 2, "data_parallel_address": "10.1.2.3"},
        {"data_parallel_size": 2},
    ),
    (
        "data_parallel_rpc_port (MoE, data_parallel_size=2)",
        {"data_parallel_size": 2, "data_parallel_rpc_port": 13999},
        {"data_parallel_size": 2},
    ),
    ("enable_expert_parallel (MoE)", {"enable_expert_parallel": True}, {}),
]

# Flips on a model whose context (32768) exceeds the default batch (8192 / 2048 / 4096 tokens).
LONG_FLIPS: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("enable_chunked_prefill (max_model_len 32768 > default batch)", {"enable_chunked_prefill": False}, {}),
    ("performance_mode=throughput", {"performance_mode": "throughput"}, {}),
]

# The same engine arguments built the way LLM(...) and `vllm serve` build them (usage_context).
CONTEXT_FLIPS: list[tuple[str, str | None, str | None]] = [
    ("usage context: LLM(...) vs none", "LLM_CLASS", None),
    ("usage context: vllm serve vs LLM(...)", "OPENAI_API_SERVER", "LLM_CLASS"),
]

SHA_A = "a" * 40


def fake_hf_cache(home: Path, repo: str, config: dict[str, Any]) -> str:
    """An HF_HOME whose hub cache holds ``repo`` at revision main (= SHA_A), as huggingface_hub lays it."""
    folder = home / "hub" / ("models--" + repo.replace("/", "--"))
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(SHA_A)
    snapshot = folder / "snapshots" / SHA_A
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps(config))
    return str(home)


def requests_for(root: Path) -> tuple[list[dict[str, Any]], list[tuple[str, str, int, int]]]:
    """The probe requests, and for each flip (kind, label, index of flipped, index of base)."""
    base_dir = make_model(root / "base")
    moe_dir = make_model(root / "moe", **TINY_QWEN2_MOE)
    requests: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    plan: list[tuple[str, str, int, int]] = []

    def add(request: dict[str, Any]) -> int:
        request = {**request, "fields": True}
        key = json.dumps(request, sort_keys=True)
        if key not in seen:
            requests.append(request)
            seen[key] = len(requests) - 1
        return seen[key]

    def flip(kind: str, label: str, flipped: dict[str, Any], against: dict[str, Any]) -> None:
        plan.append((kind, label, add(flipped), add(against)))

    for label, engine, against in ENGINE_FLIPS:
        if "tokenizer" in engine:  # it must exist: vLLM checks the path even with skip_tokenizer_init
            engine = {**engine, "tokenizer": make_model(root / "tokenizer")}
        flip("engine", label, {"model_dir": base_dir, "engine": engine}, {"model_dir": base_dir, "engine": against})
    for label, engine, against in MOE_FLIPS:
        flip("engine", label, {"model_dir": moe_dir, "engine": engine}, {"model_dir": moe_dir, "engine": against})
    long_dir = make_model(root / "long", max_position_embeddings=32768)
    for label, engine, against in LONG_FLIPS:
        flip("engine", label, {"model_dir": long_dir, "engine": engine}, {"model_dir": long_dir, "engine": against})
    for label, context, against_context in CONTEXT_FLIPS:
        flip(
            "engine",
            label,
            {"model_dir": base_dir, "usage_context": context},
            {"model_dir": base_dir, "usage_context": against_context},
        )
    for number, (label, changes) in enumerate(MODEL_FLIPS):
        other = make_model(root / f"model-{number}", **changes)
        flip("model", label, {"model_dir": other}, {"model_dir": base_dir})

    # A Hub repo id, offline, resolved from the HF cache: does the HF cache's location reach the hash?
    hf_a = fake_hf_cache(root / "hf-a", "org/tiny", TINY_QWEN2)
    hf_b = fake_hf_cache(root / "hf-b", "org/tiny", TINY_QWEN2)
    repo = {"engine": {"model": "org/tiny"}, "env": {"HF_HOME": hf_a}}
    flip(
        "model",
        "repo id offline: the same snapshot in an HF cache at another path",
        {"engine": {"model": "org/tiny"}, "env": {"HF_HOME": hf_b}},
        repo,
    )
    flip(
        "model",
        "repo id offline: revision=<the sha> vs revision unset (main -> the same sha)",
        {"engine": {"model": "org/tiny", "revision": SHA_A}, "env": {"HF_HOME": hf_a}},
        repo,
    )
    flip(
        "model",
        "repo id offline vs the snapshot directory given as a path",
        {"model_dir": str(Path(hf_a) / "hub" / "models--org--tiny" / "snapshots" / SHA_A), "env": {"HF_HOME": hf_a}},
        repo,
    )

    base_env = {"model_dir": base_dir, "inductor": True}
    for label, env in ENV_FLIPS:
        flip("env", label, {**base_env, "env": env}, base_env)
    # The env hash before any engine config is made, against after (the platform sets variables).
    flip("env", "no engine config made in the process (env hash only)", {"inductor": True}, base_env)
    return requests, plan


def diff_fields(a: dict[str, Any] | None, b: dict[str, Any] | None) -> list[str]:
    if not a or not b:
        return []
    changed = []
    for part in sorted(set(a) | set(b)):
        for name in sorted(set(a.get(part, {})) | set(b.get(part, {}))):
            if a.get(part, {}).get(name) != b.get(part, {}).get(name):
                changed.append(f"{part}.{name}")
    return changed


def measure(kinds: list[str], isolate: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as scratch:
        requests, plan = requests_for(Path(scratch))
        if kinds:  # only these kinds of flip, and only the requests they use
            plan = [step for step in plan if step[0] in kinds]
            used = sorted({i for step in plan for i in step[2:]})
            where = {old: new for new, old in enumerate(used)}
            requests = [requests[i] for i in used]
            plan = [(kind, label, where[a], where[b]) for kind, label, a, b in plan]
        requests.append({"model_dir": str(Path(scratch) / "base"), "extract": True})
        answers = run_probe(requests, isolate=isolate, timeout=3600)
    extract = answers[-1].get("extract")
    rows = []
    for kind, label, flipped, against in plan:
        a, b = answers[flipped], answers[against]
        row: dict[str, Any] = {"kind": kind, "label": label, "request": requests[flipped]}
        if not a["ok"]:
            row["error"] = a["error"].splitlines()[-1][:300] if a["error"] else "?"
        elif not b["ok"]:
            row["error"] = "base failed: " + b["error"][:300]
        else:
            row["config_hash_changes"] = a.get("config_hash") != b.get("config_hash") if "config_hash" in a else None
            row["env_hash_changes"] = a["env_hash"] != b["env_hash"]
            if "inductor_hash" in a and "inductor_hash" in b:
                row["inductor_hash_changes"] = a["inductor_hash"] != b["inductor_hash"]
            row["parts_changed"] = sorted(
                name
                for name in set(a.get("config_parts", {})) | set(b.get("config_parts", {}))
                if a.get("config_parts", {}).get(name) != b.get("config_parts", {}).get(name)
            )
            row["fields_changed"] = diff_fields(a.get("fields"), b.get("fields"))
            row["paths_changed"] = {
                name: a["paths"][name] for name in a["paths"] if a["paths"][name] != b["paths"].get(name)
            }
        rows.append(row)
    base_answer = answers[plan[0][3]]
    return {
        "rows": rows,
        "extract": extract,
        "base": {k: base_answer.get(k) for k in ("vllm", "config_hash", "env_hash", "paths", "path_rules")},
        "hashes": [{k: x.get(k) for k in ("ok", "config_hash", "env_hash", "inductor_hash", "error")} for x in answers],
    }


def main() -> None:
    out = Path(sys.argv[1])
    kinds = [arg for arg in sys.argv[2:] if not arg.startswith("--")]
    result = measure(kinds, isolate="--isolate" in sys.argv)
    out.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    for row in result["rows"]:
        if "error" in row:
            print(f"{row['kind']:6} {row['label']:60} ERROR {row['error'][:150]}")
        else:
            yes = {True: "YES", False: "no", None: "-"}
            print(
                f"{row['kind']:6} {row['label']:60} config={yes[row['config_hash_changes']]:3} "
                f"env={'YES' if row['env_hash_changes'] else 'no ':3} "
                f"inductor={ {True: 'YES', False: 'no'}.get(row.get('inductor_hash_changes'), '-') } "
                f"{','.join(row['fields_changed'])[:150]}"
            )


if __name__ == "__main__":
    main()
