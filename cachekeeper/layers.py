"""Layers: the kinds of cached artifact, each with its own rule for which facts key it."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from . import facts as f
from . import vllm_rules
from .errors import UsageError
from .facts import Fact, Facts, Source
from .values import Value

WEIGHTS = "weights"
COMPILE = "compile"
SNAPSHOT = "snapshot"

LabelPart = str | tuple[str, ...]  # a fact name, or alternatives of which the first present wins


class Layer(Value):
    """A rule: which facts key this layer's artifacts, and what its key's readable prefix shows.

    ``facts`` holds fact names and prefixes ending in ``*`` (``"engine.*"``: every engine
    argument). A listed name that the facts lack is keyed as ``unknown``, never skipped, so a
    missing fact can only cause a miss, never a false hit.

    ``follows_vllm``: engine arguments and environment variables are keyed as vLLM's own compile
    key keys them for the vLLM version in the facts, plus what vLLM misses (see ``vllm_selects``).
    """

    name: str
    facts: tuple[str, ...]
    ignore: frozenset[str] = frozenset()
    label: tuple[LabelPart, ...] = ()
    # Environment variables pointed at sub-directories of the artifact directory.
    env: tuple[tuple[str, str], ...] = ()
    follows_vllm: bool = False

    def selects(self, name: str) -> bool:
        """Whether the layer's patterns take fact ``name`` (before any version's rules)."""
        if name in self.ignore:
            return False
        return any(
            name.startswith(pattern[:-1]) if pattern.endswith("*") else name == pattern for pattern in self.facts
        )

    def selector(self, facts: Facts) -> Callable[[str], bool]:
        """Which fact names key this layer, given the facts (their ``vllm`` version chooses rules)."""
        if not self.follows_vllm:
            return self.selects
        rules = vllm_rules.rules_for(facts.value(f.VLLM, f.NONE))
        return lambda name: self.selects(name) and vllm_selects(name, rules)

    def keyed(self, facts: Facts) -> Facts:
        """The facts this layer's key is made of, with ``unknown`` for any listed name missing."""
        selects = self.selector(facts)
        chosen = [fact for fact in facts if selects(fact.name)]
        missing = [
            Fact(name, f.UNKNOWN, Source.UNKNOWN) for name in self.facts if not name.endswith("*") and name not in facts
        ]
        return Facts(tuple(chosen + missing))


# Arguments vLLM leaves out of its own compile hash (ModelConfig.compute_hash's ignore list) or
# that only say where to listen and what to log: they never change compiled code.
_ENGINE_NOISE = frozenset(
    f.ENGINE_PREFIX + name
    for name in (
        "host",
        "port",
        "served_model_name",
        "api_key",
        "seed",
        "download_dir",
        "tokenizer",
        "tokenizer_revision",
        "disable_log_stats",
        "disable_log_requests",
        "uvicorn_log_level",
    )
)


def vllm_selects(name: str, rules: vllm_rules.VllmRules | None) -> bool:
    """Whether an engine or environment fact keys compiled code under vLLM's ``rules``.

    With rules: an engine argument vLLM's hash ignores does not (unless kept despite vLLM, #53366);
    a variable does when vLLM hashes it and it is not per pod, or when it is not vLLM's and
    changes generated code (Inductor, Dynamo, Triton, TORCH_CUDA_ARCH_LIST, HF_HUB_OFFLINE).
    Without rules (a vLLM no rule file covers, or none): every engine argument and every variable
    that may change code, as facts.is_relevant_env collects them.
    """
    if rules is None:
        return True
    if name.startswith(f.ENGINE_PREFIX):
        return rules.keys_engine_arg(name[len(f.ENGINE_PREFIX) :])
    if name.startswith(f.ENV_PREFIX):
        variable = name[len(f.ENV_PREFIX) :]
        verdict = rules.keys_env(variable)
        return f.is_codegen_env(variable) if verdict is None else verdict
    return True


_MODEL = (f.MODEL, f.MODEL_REVISION)
_COMPILE_FACTS = (
    # Inductor keys by device name and Triton by arch; neither keys by driver, yet PTX JIT and
    # cubins can break across driver branches (a stale cache that crashes, not one that misses).
    f.GPU_ARCH,
    f.GPU_NAME,
    f.DRIVER_BRANCH,
    f.CUDA_RUNTIME,
    f.PYTHON,
    f.TORCH,
    f.TRITON,
    f.VLLM,
    f.FLASHINFER,
    # vLLM hashes the revision *name*; a moved branch must not reuse code compiled for old weights.
    *_MODEL,
    f.ENGINE_PREFIX + "*",
    f.ENV_PREFIX + "*",
)

DEFAULT_LAYERS: tuple[Layer, ...] = (
    # Never re-download weights because the GPU or driver changed: only the model and sha key them.
    Layer(WEIGHTS, facts=_MODEL, label=_MODEL, env=(("HF_HUB_CACHE", ""),)),
    Layer(
        COMPILE,
        facts=_COMPILE_FACTS,
        ignore=_ENGINE_NOISE,
        label=(f.GPU_ARCH, f.CUDA_RUNTIME, (f.VLLM, f.TORCH)),
        # Every cache vLLM 0.33 writes (docs/vllm-facts.md, "Where vLLM 0.33 puts its caches"):
        # VLLM_CACHE_ROOT alone leaves assets, XLA, Triton, FlashInfer, torch extensions, the sm_100
        # attention JITs and outlines in $HOME or $XDG_CACHE_HOME.
        env=(
            ("VLLM_CACHE_ROOT", "vllm"),
            ("VLLM_ASSETS_CACHE", "vllm-assets"),
            ("VLLM_XLA_CACHE_PATH", "vllm-xla"),
            ("TORCHINDUCTOR_CACHE_DIR", "inductor"),
            ("TRITON_CACHE_DIR", "triton"),
            # FlashInfer's JIT, cubins and its own autotune store (.cache/flashinfer/ under it).
            ("FLASHINFER_WORKSPACE_BASE", "flashinfer"),
            ("DG_JIT_CACHE_DIR", "deep_gemm"),
            ("TORCH_EXTENSIONS_DIR", "torch-extensions"),
            ("MINFER_FMHA_CACHE_DIR", "minfer-fmha"),
            ("MM_SPARSE_ATTN_AOT_CACHE", "minfer-sparse-attn"),
            ("OUTLINES_CACHE_DIR", "outlines"),
            # The driver's own PTX JIT cache: it lives in $HOME and would survive a driver change.
            ("CUDA_CACHE_PATH", "cuda"),
        ),
        follows_vllm=True,
    ),
    # A memory snapshot holds the whole process: every fact, the exact driver and GPU SKU included.
    Layer(
        SNAPSHOT,
        facts=(*_COMPILE_FACTS, f.GPU_MEMORY, f.GPU_COUNT, f.DRIVER, f.CUDA_DRIVER, f.IMAGE),
        label=(f.GPU_ARCH, f.DRIVER, (f.VLLM, f.TORCH)),
    ),
)


def layer_named(name: str, layers: Iterable[Layer] = DEFAULT_LAYERS) -> Layer:
    for layer in layers:
        if layer.name == name:
            return layer
    known = ", ".join(layer.name for layer in layers)
    raise UsageError(f"unknown layer {name!r}: use one of {known}")


_VARIABLE = r"[A-Za-z_][A-Za-z0-9_]*"


def custom_layer(name: str, table: Mapping[str, Any], where: str) -> Layer:
    """A layer defined in a target file's ``[layers.NAME]`` table."""
    if not name.isidentifier() or not name.islower() or name in (layer.name for layer in DEFAULT_LAYERS):
        raise UsageError(f"{where}: layer name {name!r} must be a new lowercase identifier")
    unknown = set(table) - {"facts", "label", "env"}
    if unknown:
        raise UsageError(f"{where}: unknown setting(s) {', '.join(sorted(unknown))} in [layers.{name}]")
    facts = _string_list(table.get("facts", []), f"{where}: [layers.{name}] facts")
    if not facts:
        raise UsageError(f"{where}: [layers.{name}] needs facts = [...], the fact names that key it")
    label = _string_list(table.get("label", []), f"{where}: [layers.{name}] label")
    env = _string_list(table.get("env", []), f"{where}: [layers.{name}] env")
    bad = [variable for variable in env if not re.fullmatch(_VARIABLE, variable)]
    if bad:
        raise UsageError(f"{where}: [layers.{name}] env: {bad[0]!r} is not an environment variable name")
    return Layer(name, facts=tuple(facts), label=tuple(label), env=tuple((var, "") for var in env))


def _string_list(value: Any, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise UsageError(f"{what} must be a list of strings")
    return value
