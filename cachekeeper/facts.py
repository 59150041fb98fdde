"""Facts: what is true of an environment, and where each truth came from. Plain frozen values.

fingerprint.py collects them from a running machine; a target file declares them (target.py);
layers.py says which of them key each layer.
"""

from __future__ import annotations

import hashlib
import json
import math
import string
from collections.abc import Iterable, Iterator, Mapping
from enum import StrEnum
from typing import Any, TypeAlias

from . import vllm_rules
from .errors import UsageError
from .values import Value

FactValue: TypeAlias = "str | int | float | bool | tuple[FactValue, ...] | None"


class Source(StrEnum):
    OBSERVED = "observed"  # read on this machine at run time
    DECLARED = "declared"  # written in a target file or passed as an argument
    RESOLVED = "resolved"  # a revision name turned into a commit sha (HF cache or Hub)
    INHERITED = "inherited"  # copied from the newest fingerprint observed on the same GPU type
    UNKNOWN = "unknown"  # nobody said; a key built from it is unverified


# Fact names. Layers (layers.py) choose among them; tests enumerate them.
GPU_TYPE = "gpu.type"
GPU_NAME = "gpu.name"
GPU_ARCH = "gpu.arch"
GPU_MEMORY = "gpu.memory_mib"
GPU_COUNT = "gpu.count"
DRIVER = "driver.version"
DRIVER_BRANCH = "driver.branch"
CUDA_DRIVER = "cuda.driver"
CUDA_RUNTIME = "cuda.runtime"
PYTHON = "python"
TORCH = "torch"
TRITON = "triton"
VLLM = "vllm"
FLASHINFER = "flashinfer"
MODEL = "model"
MODEL_REVISION = "model.revision"
IMAGE = "image"
ENGINE_PREFIX = "engine."
ENV_PREFIX = "env."

NONE = "none"  # the value of a fact that is known to be absent (no GPU, package not installed)
UNKNOWN = "unknown"  # the value of a fact nobody could tell

# Distribution names to try, in order, for each package fact.
PACKAGES: dict[str, tuple[str, ...]] = {
    TORCH: ("torch",),
    TRITON: ("triton", "pytorch-triton"),
    VLLM: ("vllm",),
    FLASHINFER: ("flashinfer-python", "flashinfer"),
}

# Names are checked with string methods, not regular expressions: a boot checks a dozen kinds of
# name, and each pattern would cost it 0.03 to 0.1 ms to compile (about 1 ms in all on a small machine).
_HEX = frozenset("0123456789abcdef")
_ASCII_ALNUM = frozenset(string.ascii_letters + string.digits)
_IN_REPO_ID = frozenset("_.-")


def is_hex(text: str, length: int) -> bool:
    """Whether ``text`` is ``length`` lower-case hex digits."""
    return len(text) == length and set(text) <= _HEX


def is_commit_sha(text: str) -> bool:
    return is_hex(text, 40)


def is_repo_id(text: str) -> bool:
    """``name`` or ``org/name``: each part starts with an ASCII letter or digit and holds word
    characters (letters and digits of any script, and _), dots and dashes."""
    parts = text.split("/")
    return len(parts) <= 2 and all(
        part[:1] in _ASCII_ALNUM and all(char.isalnum() or char in _IN_REPO_ID for char in part) for part in parts
    )


def replace_runs(text: str, allowed: frozenset[str], by: str) -> str:
    """``text`` with each run of characters outside ``allowed`` replaced by ``by`` (not in ``allowed``)."""
    kept: list[str] = []
    for char in text:
        if char in allowed:
            kept.append(char)
        elif not kept or kept[-1] != by:
            kept.append(by)
    return "".join(kept)


class Fact(Value):
    name: str
    value: FactValue
    source: Source


class Facts:
    """An immutable set of facts, at most one per name, iterated in name order.

    A plain class rather than a frozen dataclass: defining one costs every boot half a millisecond.
    """

    __slots__ = ("_index", "items")
    items: tuple[Fact, ...]
    _index: Mapping[str, Fact]

    def __init__(self, items: Iterable[Fact] = ()) -> None:
        ordered = tuple(sorted(items, key=lambda fact: fact.name))
        index = {fact.name: fact for fact in ordered}
        if len(index) != len(ordered):
            raise ValueError("a fact name appears twice")
        object.__setattr__(self, "items", ordered)
        object.__setattr__(self, "_index", index)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"Facts are immutable: cannot set {name}")

    def __eq__(self, other: object) -> bool:
        return self.items == other.items if isinstance(other, Facts) else NotImplemented

    def __hash__(self) -> int:
        return hash(self.items)

    def __repr__(self) -> str:
        return f"Facts(items={self.items!r})"

    def __reduce__(self) -> tuple[type[Facts], tuple[tuple[Fact, ...]]]:
        return Facts, (self.items,)  # copied and pickled through __init__, never __setattr__

    @classmethod
    def from_values(cls, values: Mapping[str, Any], source: Source) -> Facts:
        return cls(tuple(Fact(name, freeze(value), source) for name, value in values.items()))

    def __iter__(self) -> Iterator[Fact]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __contains__(self, name: object) -> bool:
        return name in self._index

    def __getitem__(self, name: str) -> Fact:
        return self._index[name]

    def get(self, name: str) -> Fact | None:
        return self._index.get(name)

    def value(self, name: str, default: FactValue = UNKNOWN) -> FactValue:
        fact = self._index.get(name)
        return default if fact is None else fact.value

    def values(self) -> dict[str, FactValue]:
        return {fact.name: fact.value for fact in self.items}

    def merged(self, overrides: Iterable[Fact]) -> Facts:
        """These facts with ``overrides`` replacing any of the same name."""
        combined = dict(self._index)
        combined.update((fact.name, fact) for fact in overrides)
        return Facts(tuple(combined.values()))

    def without(self, prefix: str) -> Facts:
        return Facts(tuple(fact for fact in self.items if not fact.name.startswith(prefix)))

    def to_json(self) -> dict[str, dict[str, Any]]:
        return {f.name: {"value": thaw(f.value), "source": str(f.source)} for f in self.items}

    @classmethod
    def from_json(cls, data: Mapping[str, Mapping[str, Any]]) -> Facts:
        return cls(tuple(Fact(name, freeze(item["value"]), Source(item["source"])) for name, item in data.items()))


def freeze(value: Any) -> FactValue:
    """A JSON-like value made immutable: lists become tuples; anything else must be a scalar."""
    if isinstance(value, (list, tuple)):
        return tuple(freeze(item) for item in value)
    if isinstance(value, float) and not math.isfinite(value):
        raise TypeError(f"{value!r} is not a finite number: a key cannot be made of it")
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(f"{value!r} is not a plain value (use strings, numbers, booleans or lists)")


def thaw(value: FactValue) -> Any:
    if isinstance(value, tuple):
        return [thaw(item) for item in value]
    return value


# Environment variables that can change what gets compiled. HF_HUB_OFFLINE is among them because
# vLLM hashes a local snapshot path instead of the repo id when offline (see vllm-cache.md §5).
_ENV_PREFIXES = ("VLLM_", "TORCH", "TRITON_", "CUDA_")
_ENV_EXTRA = frozenset({"HF_HUB_OFFLINE"})
# Locations, addresses, ranks, logging and secrets differ between containers running the very same
# code; hashing them is how vLLM once missed its own cache on every pod (dynamo#10695, PR #47573).
_ENV_NOISE_SUFFIXES = ("_DIR", "_PATH", "_ROOT", "_HOME", "_PORT", "_HOST", "_IP", "_ADDR", "_URL")
_ENV_NOISE_PARTS = (
    "VISIBLE_DEVICES",
    "LOG",
    "KEY",
    "TOKEN",
    "SECRET",
    "PASSWORD",
    "RANK",
    "INSTANCE_ID",
    "BUNDLE_INDICES",  # Ray placement (VLLM_RAY_BUNDLE_INDICES)
)
_ENV_NOISE_PREFIXES = ("TORCHELASTIC_",)
_ENV_NOISE = frozenset({"VLLM_ASSETS_CACHE"})
# Paths that are not locations but tools and toolkits: which ptxas Triton runs, which CUDA toolkit
# JIT builds use. They change generated code whatever their names end with.
_ENV_TOOLS = frozenset(
    {
        "CUDA_HOME",
        "TRITON_PTXAS_PATH",
        "TRITON_PTXAS_BLACKWELL_PATH",
        "TRITON_CUOBJDUMP_PATH",
        "TRITON_NVDISASM_PATH",
        "TRITON_LIBDEVICE_PATH",
        "TRITON_CUDACRT_PATH",
        "TRITON_CUDART_PATH",
    }
)
# What changes generated code whatever vLLM hashes: Inductor's and Dynamo's switches (vLLM's key
# sees Inductor's config only through its compiler hash), Triton's code generation and tools (no
# part of vLLM's key), the architectures torch builds extensions for, and HF_HUB_OFFLINE.
_CODEGEN_PREFIXES = ("TORCHINDUCTOR_", "TORCHDYNAMO_", "TRITON_")
_CODEGEN = frozenset({"TORCH_CUDA_ARCH_LIST"})


def is_relevant_env(name: str) -> bool:
    """Whether a variable may change compiled code under some rule: it is then a fact (its value
    concealed unless on SHOWN_ENV). Which layer keys it is the layer's rule (layers.py)."""
    return _may_change_code(name) or name in vllm_rules.keyed_env_anywhere()


def is_codegen_env(name: str) -> bool:
    """Whether a variable that is not vLLM's changes generated code (kept where vLLM's own rules
    decide the rest, see layers.py)."""
    if name in _ENV_EXTRA or name in _ENV_TOOLS or name in _CODEGEN:
        return True
    return name.startswith(_CODEGEN_PREFIXES) and _may_change_code(name)


def _may_change_code(name: str) -> bool:
    if name in _ENV_EXTRA or name in _ENV_TOOLS:
        return True
    if not name.startswith(_ENV_PREFIXES) or name in _ENV_NOISE:
        return False
    return not (
        name.endswith(_ENV_NOISE_SUFFIXES)
        or name.startswith(_ENV_NOISE_PREFIXES)
        or any(part in name for part in _ENV_NOISE_PARTS)
    )


# Variables whose values are known to be harmless, shown as they are so that ``explain`` can say
# 0 → 1. Every other keyed value may hold a secret (a token, a password in a URL): keys, sidecars,
# journals, the manifest and every command see only its digest, and ``explain`` still says *that*
# it changed.
SHOWN_ENV = frozenset(
    {
        "HF_HUB_OFFLINE",
        "CUDA_LAUNCH_BLOCKING",
        "TORCH_CUDA_ARCH_LIST",
        "TORCHINDUCTOR_COMPILE_THREADS",
        "TORCHINDUCTOR_COORDINATE_DESCENT_TUNING",
        "TORCHINDUCTOR_FREEZING",
        "TORCHINDUCTOR_MAX_AUTOTUNE",
        "TRITON_OVERRIDE_ARCH",
        "VLLM_ATTENTION_BACKEND",
        "VLLM_BATCH_INVARIANT",
        "VLLM_COMPILE_CACHE_SAVE_FORMAT",
        "VLLM_DISABLE_COMPILE_CACHE",
        "VLLM_ENABLE_INDUCTOR_COORDINATE_DESCENT_TUNING",
        "VLLM_ENABLE_INDUCTOR_MAX_AUTOTUNE",
        "VLLM_FLOAT32_MATMUL_PRECISION",
        "VLLM_KV_CACHE_LAYOUT",
        "VLLM_PP_LAYER_PARTITION",
        "VLLM_USE_AOT_COMPILE",
        "VLLM_USE_DEEP_GEMM",
        "VLLM_USE_MEGA_AOT_ARTIFACT",
        "VLLM_USE_STANDALONE_COMPILE",
        "VLLM_USE_V1",
    }
)
# Engine arguments whose names say they hold a credential (hf_token, api_key, ...), by the words
# of the name: max_num_batched_tokens and tokenizer are no credentials.
_SECRET_WORDS = frozenset(
    {"token", "key", "apikey", "secret", "password", "passwd", "pass", "auth", "credential", "credentials", "cookie"}
)
DIGEST_PREFIX = "sha256:"


def conceal(name: str, value: str) -> str:
    """``sha256:…`` for ``value``: the same on every machine, so it keys as the value would, but
    it gives the value away to nobody who does not already know it."""
    digest = hashlib.sha256(f"cachekeeper\0{name}\0{value}".encode("utf-8", "surrogateescape")).hexdigest()
    return DIGEST_PREFIX + digest[:32]


def env_facts(environ: Mapping[str, str], source: Source = Source.OBSERVED) -> list[Fact]:
    """One fact per relevant variable: its value if harmless (SHOWN_ENV), else its digest."""
    return [
        Fact(ENV_PREFIX + name, value if name in SHOWN_ENV else conceal(name, value), source)
        for name, value in sorted(environ.items())
        if is_relevant_env(name)
    ]


def engine_facts(engine: Mapping[str, Any], source: Source = Source.DECLARED) -> list[Fact]:
    """``{"compilation_config": {"level": 3}}`` becomes the fact ``engine.compilation_config.level``."""
    facts: list[Fact] = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for key in sorted(value):
                walk(f"{prefix}.{key}", value[key])
            return
        try:
            frozen = freeze(value)
        except TypeError as error:
            raise UsageError(f"engine argument {prefix[len(ENGINE_PREFIX) :]}: {error}") from None
        words = prefix.lower().replace("-", ".").replace("_", ".").split(".")
        if _SECRET_WORDS.intersection(words) and frozen is not None:
            frozen = conceal(prefix, json.dumps(thaw(frozen), sort_keys=True))
        facts.append(Fact(prefix, frozen, source))

    for name in sorted(engine):
        walk(ENGINE_PREFIX + str(name), engine[name])
    seen: set[str] = set()
    for fact in facts:
        if fact.name in seen:  # {"a": {"b": 1}, "a.b": 2}
            raise UsageError(f"engine argument {fact.name[len(ENGINE_PREFIX) :]} is given twice")
        seen.add(fact.name)
    return facts


def hf_repo_folder(model: str) -> str:
    """The folder huggingface_hub gives a model repo in its cache: ``models--org--name``."""
    return "--".join(("models", *model.split("/")))
