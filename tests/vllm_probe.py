"""Ask vLLM itself what its compile-cache key and cache locations are. Run with the vLLM venv's python.

    .venv-vllm/bin/python tests/vllm_probe.py [--jobs N] [--home DIR] [--isolate] < request.json

A request (or a JSON list of them, to pay for ``import vllm`` once per environment):

    {"engine": {...EngineArgs keyword arguments...},    # optional
     "env": {"VLLM_PORT": "9000", "HOME": null, ...},   # optional; null removes a variable
     "model_dir": "/path/with/config.json",             # optional; no engine config without it
     "usage_context": null,                              # optional: "LLM_CLASS", "OPENAI_API_SERVER", ...
     "fields": false,                                    # optional: every config field's value too
     "env_factors": false,                               # optional: envs.compile_factors() itself
     "inductor": false,                                  # optional: inductor_hash (see inductor_hash())
     "extract": false,                                   # optional: vLLM's lists (see extract())
     "call": null}                                       # optional: {"function": "pkg.mod:name",
                                                         #   "path": DIR, "args": [...]}: its JSON
                                                         #   result, called in the worker (vLLM loaded)

Each answer is a JSON object, in request order:

    {"ok": true, "vllm": "0.33.0",
     "config_hash": VllmConfig.compute_hash(),
     "config_parts": {"model_config": ModelConfig.compute_hash(), ...},
     "env_hash": hash_factors(envs.compile_factors()),   # as VllmBackend and the AOT key hash it
     "paths": {"vllm_cache_root": ..., "triton_cache": ..., ...},
     "path_rules": [names in paths computed from a rule read in the source, not by calling it]}

or ``{"ok": false, "error": "..."}``.

Environment. vllm.envs reads variables lazily, but vLLM and torch also read them once at import
(``transformers_utils/config.py`` reads VLLM_USE_MODELSCOPE at import, ``forward_context.py`` and
``shm_broadcast.py`` keep values in module globals, ``env_override.py`` writes variables, torch's
inductor and triton's knobs read theirs when first imported) and ``enable_envs_cache()`` freezes
them. Changing ``os.environ`` inside one process would therefore answer for a process vLLM never
runs. So the driver groups requests by environment and runs each group in a fresh worker process
(``--worker``) started with exactly that environment; groups run in parallel.

A worker's environment is hermetic: PATH and locale from the caller, then ``HOME`` and ``TMPDIR``
in a scratch directory (vLLM writes ``modelinfos/`` under its cache root while it inspects a
model), ``VLLM_TARGET_DEVICE=cpu`` and ``HF_HUB_OFFLINE=1``, then the request's ``env``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from typing import Any

# Taken from the caller: what a process needs to start, nothing that can change vLLM's answers.
# OPENBLAS_* are set on some machines so that numpy does not crash on their processors.
PASSED_THROUGH = ("PATH", "LANG", "LC_ALL", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
PROBE_ENV = {"VLLM_TARGET_DEVICE": "cpu", "HF_HUB_OFFLINE": "1"}
WORKER_TIMEOUT_S = 300


# --- driver -----------------------------------------------------------------------------------


def drive(
    requests: list[dict[str, Any]], jobs: int, *, home: str | None = None, isolate: bool = False
) -> list[dict[str, Any]]:
    """Answers in request order. ``home``: a HOME kept between runs (vLLM's modelinfos cache in it
    saves ~7 s per worker); ``isolate``: one process per request, to check that batching is exact."""
    scratch = tempfile.mkdtemp(prefix="vllm-probe-")
    try:
        base = {name: os.environ[name] for name in PASSED_THROUGH if name in os.environ}
        base.update(HOME=home or os.path.join(scratch, "home"), TMPDIR=os.path.join(scratch, "tmp"), **PROBE_ENV)
        os.makedirs(base["HOME"], exist_ok=True)
        os.makedirs(base["TMPDIR"])
        groups: dict[tuple[Any, ...], list[int]] = {}
        for index, request in enumerate(requests):
            env = dict(base)
            for name, value in (request.get("env") or {}).items():
                if value is None:
                    env.pop(name, None)
                else:
                    env[name] = str(value)
            key = tuple(sorted(env.items()))
            groups.setdefault((key, index) if isolate else (key,), []).append(index)
        results: list[dict[str, Any]] = [{}] * len(requests)

        def run_group(key: tuple[Any, ...], indexes: list[int]) -> None:
            answers = _run_worker(dict(key[0]), [requests[i] for i in indexes])
            for index, answer in zip(indexes, answers, strict=False):
                results[index] = answer

        with ThreadPoolExecutor(max_workers=max(1, min(jobs, len(groups)))) as pool:
            for future in [pool.submit(run_group, key, indexes) for key, indexes in groups.items()]:
                future.result()
        return results
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _run_worker(env: dict[str, str], requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    try:
        done = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--worker"],
            input=json.dumps(requests),
            capture_output=True,
            text=True,
            env=env,
            timeout=WORKER_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        return [{"ok": False, "error": f"worker timed out after {WORKER_TIMEOUT_S} s"}] * len(requests)
    try:
        answers = json.loads(done.stdout)
        if isinstance(answers, list) and len(answers) == len(requests):
            return answers
    except ValueError:
        pass
    error = f"worker exited {done.returncode} without an answer:\n{done.stderr[-4000:]}"
    return [{"ok": False, "error": error}] * len(requests)


# --- worker -----------------------------------------------------------------------------------


def work(requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    import vllm

    # What a fresh process has once vllm is imported (the import itself sets a few variables).
    # create_engine_config() writes more (the CPU platform sets VLLM_SSM_CONV_STATE_LAYOUT,
    # VLLM_DISABLE_SHARED_EXPERTS_STREAM, ...), and those are env-hash factors: each request
    # starts again from this state, as if it were the first in its process.
    environ_after_import = dict(os.environ)
    answers = []
    for request in requests:
        os.environ.clear()
        os.environ.update(environ_after_import)
        try:
            answers.append({"ok": True, "vllm": vllm.__version__, **answer(request)})
        except Exception as error:  # one bad request must not lose the others' answers
            answers.append({"ok": False, "error": f"{type(error).__name__}: {error}"[:4000]})
    return answers


def answer(request: dict[str, Any]) -> dict[str, Any]:
    import vllm.envs as envs
    from vllm.config.utils import hash_factors

    if request.get("call"):
        return {"result": call(request["call"])}
    out: dict[str, Any] = {}
    engine = dict(request.get("engine") or {})
    if request.get("model_dir"):
        engine.setdefault("model", request["model_dir"])
    if "model" in engine:
        from vllm.engine.arg_utils import EngineArgs

        engine.setdefault("skip_tokenizer_init", True)
        # LLM(...) passes LLM_CLASS and `vllm serve` OPENAI_API_SERVER: their batch defaults differ.
        context = request.get("usage_context")
        if context:
            from vllm.usage.usage_lib import UsageContext

            config = EngineArgs(**engine).create_engine_config(usage_context=UsageContext[context])
        else:
            config = EngineArgs(**engine).create_engine_config()
        out["config_hash"] = config.compute_hash()
        out["config_parts"] = config_parts(config)
        if request.get("fields"):
            out["fields"] = config_fields(config)
    # After the engine config, as in a real boot: the env hash is taken when the model compiles.
    factors = envs.compile_factors()
    out["env_hash"] = hash_factors(factors)
    if request.get("env_factors"):
        out["env_factors"] = factors
    if request.get("inductor"):
        out["inductor_hash"] = inductor_hash()
    out["paths"], out["path_rules"] = cache_paths()
    if request.get("extract"):
        out["extract"] = extract(engine.get("model"))
    return out


def call(spec: dict[str, Any]) -> Any:
    """Call ``spec["function"]`` ("package.module:name", importable from ``spec["path"]``) with
    ``spec["args"]`` in this worker, where vLLM is already imported: a test that needs vLLM's own
    code next to the probe's answers does not pay for another process (~8 s of CPU)."""
    import importlib

    if spec.get("path") and spec["path"] not in sys.path:
        sys.path.insert(0, spec["path"])
    module_name, _, name = spec["function"].partition(":")
    return getattr(importlib.import_module(module_name), name)(*spec.get("args", []))


def inductor_hash() -> str:
    """What InductorStandaloneAdaptor.compute_hash() gives (the compiler_hash of the per-backend
    directory; the AOT key holds the same factors when VLLM_USE_MEGA_AOT_ARTIFACT is on): the
    system (GPU name or CPU), torch's source hash, and Inductor's and functorch's portable config,
    which TORCHINDUCTOR_* variables change. It costs ~2 s the first time (torch's source hash)."""
    import vllm.envs as envs
    from vllm.compilation.compiler_interface import get_inductor_factors
    from vllm.utils.hashing import safe_hash

    factors = get_inductor_factors(envs.VLLM_USE_AOT_COMPILE)
    return safe_hash(str(factors).encode(), usedforsecurity=False).hexdigest()[:10]


def config_parts(config: Any) -> dict[str, str | None]:
    """Each sub-config's own compute_hash(), to tell which part of VllmConfig's hash moved."""
    parts: dict[str, str | None] = {}
    for name in sorted(vars(config)):
        value = getattr(config, name)
        if value is not None and callable(getattr(value, "compute_hash", None)):
            try:
                parts[name] = value.compute_hash()
            except Exception as error:
                parts[name] = f"error: {type(error).__name__}: {error}"
    return parts


def config_fields(config: Any) -> dict[str, dict[str, Any]]:
    """Every dataclass field of every sub-config, as vLLM normalises it for hashing (or repr)."""
    from dataclasses import fields, is_dataclass

    from vllm.config.utils import normalize_value

    out: dict[str, dict[str, Any]] = {}
    for name in sorted(vars(config)):
        value = getattr(config, name)
        if not is_dataclass(value):
            continue
        out[name] = {}
        for field in fields(value):
            item = getattr(value, field.name, None)
            try:
                out[name][field.name] = json.loads(json.dumps(normalize_value(item), default=repr))
            except Exception:
                out[name][field.name] = repr(item)[:500]
    return out


def cache_paths() -> tuple[dict[str, str | None], list[str]]:
    """Where each cache would go in this environment, by calling the code that decides it where
    it can be called on this machine, else by the rule read in that code (named in path_rules)."""
    import vllm.envs as envs

    paths: dict[str, str | None] = {}
    rules: list[str] = []
    root = envs.VLLM_CACHE_ROOT
    paths["vllm_cache_root"] = root
    paths["vllm_config_root"] = envs.VLLM_CONFIG_ROOT
    paths["vllm_assets_cache"] = envs.VLLM_ASSETS_CACHE
    paths["vllm_xla_cache"] = envs.VLLM_XLA_CACHE_PATH
    paths["vllm_rpc_base_path"] = envs.VLLM_RPC_BASE_PATH
    # vllm/compilation/backends.py (VllmBackend.__call__) and decorators.py (the AOT path).
    paths["torch_compile_cache"] = os.path.join(root, "torch_compile_cache")
    paths["torch_aot_compile"] = os.path.join(root, "torch_compile_cache", "torch_aot_compile")
    rules += ["torch_compile_cache", "torch_aot_compile"]

    from vllm.model_executor.models.registry import _LazyRegisteredModel

    paths["modelinfos"] = str(_LazyRegisteredModel._get_cache_dir())
    from vllm.v1.worker.startup_plan import _plan_path

    paths["startup_plan"] = os.path.dirname(_plan_path("0" * 16))
    # vllm/utils/deep_gemm.py sets DG_JIT_CACHE_DIR when unset; only with deep_gemm importable.
    paths["deep_gemm"] = os.environ.get("DG_JIT_CACHE_DIR") or os.path.join(root, "deep_gemm")
    rules.append("deep_gemm")
    from vllm.v1.structured_output.utils import get_outlines_cache_path

    paths["outlines"] = get_outlines_cache_path()

    try:
        from flashinfer.autotune_cache import get_default_cache_root
        from flashinfer.jit import env as jit_env
        from vllm.model_executor.warmup.flashinfer_autotune_cache import (
            flashinfer_autotune_root,
            resolve_flashinfer_autotune_v2_root,
        )

        paths["flashinfer_workspace"] = str(jit_env.FLASHINFER_WORKSPACE_DIR)
        paths["flashinfer_jit"] = str(jit_env.FLASHINFER_JIT_DIR)
        paths["flashinfer_cubins"] = str(jit_env.FLASHINFER_CUBIN_DIR)
        # v1: TP/PP/multi-node runs; v2 (flashinfer's managed store): a single rank on one node.
        paths["flashinfer_autotune_v1"] = str(flashinfer_autotune_root())
        paths["flashinfer_autotune_v2"] = str(resolve_flashinfer_autotune_v2_root() or get_default_cache_root())
    except ImportError:
        # flashinfer/jit/env.py: FLASHINFER_WORKSPACE_BASE, else the home directory.
        base = os.environ.get("FLASHINFER_WORKSPACE_BASE") or os.path.expanduser("~")
        paths["flashinfer_workspace"] = os.path.join(base, ".cache", "flashinfer")
        rules.append("flashinfer_workspace")

    try:
        from triton import knobs

        paths["triton_cache"] = knobs.cache.dir
    except ImportError:
        # triton/knobs.py (3.8): TRITON_CACHE_DIR, else $TRITON_HOME/.triton/cache, TRITON_HOME
        # defaulting to the home directory.
        home = os.environ.get("TRITON_HOME") or os.path.expanduser("~/")
        paths["triton_cache"] = os.environ.get("TRITON_CACHE_DIR") or os.path.join(home, ".triton", "cache")
        rules.append("triton_cache")

    import torch
    from torch.utils.cpp_extension import get_default_build_root

    # torch/utils/cpp_extension.py _get_build_directory: an explicit TORCH_EXTENSIONS_DIR is used
    # as is; the default gets a py<ver>_<cu|rocm|cpu> folder.
    explicit = os.environ.get("TORCH_EXTENSIONS_DIR")
    if explicit:
        paths["torch_extensions"] = explicit
    else:
        accelerator = (
            f"rocm{torch.version.hip.replace('.', '')}"
            if torch.version.hip
            else f"cu{torch.version.cuda.replace('.', '')}"
            if torch.version.cuda
            else "cpu"
        )
        python = f"py{sys.version_info.major}{sys.version_info.minor}{getattr(sys, 'abiflags', '')}"
        paths["torch_extensions"] = os.path.join(get_default_build_root(), f"{python}_{accelerator}")
    rules.append("torch_extensions")
    # vllm/third_party/fmha_sm100 (sm_100 attention JIT): MINFER_FMHA_CACHE_DIR, else ~/.cache/minfer.
    paths["minfer_fmha_sm100"] = os.environ.get("MINFER_FMHA_CACHE_DIR") or os.path.expanduser(
        "~/.cache/minfer/fmha_sm100"
    )
    rules.append("minfer_fmha_sm100")
    # vllm/third_party/fmha_sm100/cute/src/common/aot_cache.py (sparse MM attention AOT kernels).
    paths["minfer_mm_sparse_attn"] = os.environ.get("MM_SPARSE_ATTN_AOT_CACHE") or os.path.expanduser(
        "~/.cache/minfer/mm_sparse_attn"
    )
    rules.append("minfer_mm_sparse_attn")

    from huggingface_hub import constants

    paths["hf_hub_cache"] = constants.HF_HUB_CACHE

    # Last: cache_dir() creates the directory and writes TORCHINDUCTOR_CACHE_DIR into os.environ.
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    paths["torchinductor_cache"] = cache_dir()
    return paths, rules


def extract(model: str | None) -> dict[str, Any]:
    """vLLM's own lists, read from the running code rather than copied from it.

    env: every variable vllm.envs knows, and which compile_factors() hashes (the ignore set is the
    difference, plus the extra names it hashes that vllm.envs does not know).
    config: for each config class whose compute_hash goes through get_hash_factors, the ignore set
    it passes (recorded by wrapping get_hash_factors while VllmConfig.compute_hash() runs on a
    real config) and the dataclass fields it therefore hashes.
    """
    import ast
    import dataclasses
    import importlib
    import inspect
    import textwrap

    import vllm.config.utils as config_utils
    import vllm.envs as envs
    from vllm.engine.arg_utils import EngineArgs

    known = sorted(envs.environment_variables)
    hashed = sorted(envs.compile_factors())
    site = os.path.dirname(os.path.dirname(vllm_file()))
    lines, first = inspect.getsourcelines(envs.compile_factors)
    tree = ast.parse(textwrap.dedent("".join(lines)))
    literal = next(
        sorted(element.value for element in node.value.elts)
        for node in ast.walk(tree)
        if isinstance(node, ast.AnnAssign)
        and isinstance(node.value, ast.Set)
        and getattr(node.target, "id", "") == "ignored_factors"
    )
    out: dict[str, Any] = {
        "env_source": f"{os.path.relpath(inspect.getsourcefile(envs.compile_factors), site)}:{first}",
        # The ignored_factors set literal in compile_factors(), verbatim.
        "env_ignore_literal": literal,
        "env_ignore_literal_not_in_envs": [name for name in literal if name not in envs.environment_variables],
        "env_known": known,
        "env_hashed": [name for name in hashed if name in envs.environment_variables],
        "env_ignored": sorted(set(known) - set(hashed)),
        "env_hashed_unknown_to_envs": [name for name in hashed if name not in envs.environment_variables],
        "engine_args_fields": [field.name for field in dataclasses.fields(EngineArgs)],
    }

    calls: dict[str, dict[str, Any]] = {}
    original = config_utils.get_hash_factors

    def recording(config: Any, ignored_factors: set[str]) -> dict[str, object]:
        names = [field.name for field in dataclasses.fields(config)]
        calls[type(config).__qualname__] = {
            "source": os.path.relpath(inspect.getsourcefile(type(config)), site),
            "ignored": sorted(ignored_factors),
            "hashed": [name for name in names if name not in ignored_factors],
        }
        return original(config, ignored_factors)

    patched = []
    for module_name in list(sys.modules):
        module = sys.modules[module_name]
        if module_name.startswith("vllm.") and getattr(module, "get_hash_factors", None) is original:
            patched.append(module)
    try:
        for module in patched:
            module.get_hash_factors = recording
        # A real engine config, so every sub-config that is present hashes through the recorder.
        if model is None:
            raise ValueError("extract needs model_dir: the config ignore sets are read from a real config")
        EngineArgs(model=model, skip_tokenizer_init=True).create_engine_config().compute_hash()
    finally:
        for module in patched:
            module.get_hash_factors = original
    out["config_hash_factors"] = calls

    # Config classes whose compute_hash builds its own list instead (read, not run): name them.
    own_list = {}
    for module_name in (
        "vllm.config.scheduler",
        "vllm.config.lora",
        "vllm.config.speculative",
        "vllm.config.multimodal",
        "vllm.config.device",
        "vllm.config.load",
        "vllm.config.observability",
        "vllm.config.structured_outputs",
        "vllm.config.profiler",
        "vllm.config.kv_transfer",
        "vllm.config.ec_transfer",
        "vllm.config.pooler",
        "vllm.config.aux_output",
    ):
        module = importlib.import_module(module_name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == module_name and "compute_hash" in vars(cls) and cls.__qualname__ not in calls:
                own_list[cls.__qualname__] = module_name.replace(".", "/") + ".py"
    out["config_own_factor_lists"] = own_list
    return out


def vllm_file() -> str:
    import vllm

    return vllm.__file__


def main() -> None:
    args = sys.argv[1:]
    if args[:1] == ["--worker"]:
        # vLLM logs to stdout: keep the real stdout for the answer and send everything else,
        # C-level writes included, to stderr.
        answer_fd = os.dup(1)
        os.dup2(2, 1)
        requests = json.load(sys.stdin)
        with os.fdopen(answer_fd, "w") as answer_out:
            json.dump(work(requests), answer_out)
        return
    jobs = int(args[args.index("--jobs") + 1]) if "--jobs" in args else (os.cpu_count() or 1)
    home = args[args.index("--home") + 1] if "--home" in args else None
    data = json.load(sys.stdin)
    single = isinstance(data, dict)
    requests = [data] if single else list(data)
    results = drive(requests, jobs, home=home, isolate="--isolate" in args)
    json.dump(results[0] if single else results, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
