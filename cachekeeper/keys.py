"""Cache keys: a stable digest of a layer's facts with a prefix people can read. Pure: no I/O.

The same facts give the same key on every machine, Python version and hash seed: the digest is
SHA-256 over canonical JSON (sorted keys, fixed separators, ASCII), never over ``hash()``.
"""

from __future__ import annotations

import hashlib
import json
import string
from collections.abc import Iterable
from typing import Any

from . import facts as f
from .errors import UnknownKeyError
from .facts import Facts, FactValue, Source, thaw
from .layers import DEFAULT_LAYERS, Layer
from .values import Value

# Bump when the derivation below changes, so that no old key can collide with a new one.
KEY_SCHEMA = 1
DIGEST_LENGTH = 16
_LABEL_LIMIT = 64
# A key is LAYER-LABEL-DIGEST or LAYER-DIGEST: [a-z][a-z0-9_]*, then [a-z0-9._-]+, then 16 hex digits.
_LAYER_START = frozenset(string.ascii_lowercase)
_IN_LAYER = frozenset(string.ascii_lowercase + string.digits + "_")
_IN_LABEL = frozenset(string.ascii_lowercase + string.digits + "._-")
_SAFE_IN_LABEL = _IN_LABEL - {"-"}  # a label's parts are joined by dashes

ABSENT = "(absent)"  # what explain shows for a fact one side does not have
_NO_FACTS = Facts()


class CacheKey:
    """``compile-sm90-cu130-vllm0.33.0-3f9a1c2b7e4d5a60``: layer, readable label, digest.

    ``facts`` are the facts the digest was made of, with their sources; they do not take part in
    equality, which is the key string's alone. A plain class for the reason Facts is one.
    """

    __slots__ = ("digest", "facts", "label", "layer")
    layer: str
    label: str
    digest: str
    facts: Facts

    def __init__(self, layer: str, label: str, digest: str, facts: Facts = _NO_FACTS) -> None:
        for name, value in (("layer", layer), ("label", label), ("digest", digest), ("facts", facts)):
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"a CacheKey is immutable: cannot set {name}")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CacheKey):
            return NotImplemented
        return (self.layer, self.label, self.digest) == (other.layer, other.label, other.digest)

    def __hash__(self) -> int:
        return hash((self.layer, self.label, self.digest))

    def __repr__(self) -> str:
        return f"CacheKey(layer={self.layer!r}, label={self.label!r}, digest={self.digest!r})"

    def __reduce__(self) -> tuple[type[CacheKey], tuple[str, str, str, Facts]]:
        return CacheKey, (self.layer, self.label, self.digest, self.facts)

    def __str__(self) -> str:
        return "-".join(part for part in (self.layer, self.label, self.digest) if part)

    @property
    def unverified(self) -> tuple[str, ...]:
        """Names of the facts nobody could tell, which make this key a guess."""
        return tuple(fact.name for fact in self.facts if fact.source is Source.UNKNOWN)


class FactChange(Value):
    name: str
    old: FactValue
    new: FactValue

    def __str__(self) -> str:
        return f"{self.name}: {_show(self.old)} → {_show(self.new)}"

    def to_json(self) -> dict[str, Any]:
        return {"fact": self.name, "old": thaw(self.old), "new": thaw(self.new)}


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def derive_key(layer: Layer, facts: Facts) -> CacheKey:
    keyed = layer.keyed(facts)
    payload = {"schema": KEY_SCHEMA, "layer": layer.name, "facts": {n: thaw(v) for n, v in keyed.values().items()}}
    digest = hashlib.sha256(canonical_json(payload).encode("ascii")).hexdigest()[:DIGEST_LENGTH]
    return CacheKey(layer.name, _label(layer, keyed), digest, keyed)


def derive_keys(facts: Facts, layers: Iterable[Layer] = DEFAULT_LAYERS) -> dict[str, CacheKey]:
    return {layer.name: derive_key(layer, facts) for layer in layers}


def explain(old: CacheKey, new: CacheKey) -> tuple[FactChange, ...]:
    """The facts that differ between two keys, old value → new value, in name order."""
    changes = []
    if old.layer != new.layer:
        changes.append(FactChange("layer", old.layer, new.layer))
    before, after = old.facts.values(), new.facts.values()
    for name in sorted(before.keys() | after.keys()):
        was, now = before.get(name, ABSENT), after.get(name, ABSENT)
        if was != now or type(was) is not type(now):
            changes.append(FactChange(name, was, now))
    return tuple(changes)


def is_layer_name(text: str) -> bool:
    """``[a-z][a-z0-9_]*``: how layers are named, and the first part of their keys."""
    return text[:1] in _LAYER_START and set(text) <= _IN_LAYER


def parse_key(text: str) -> tuple[str, str]:
    """(layer, digest) of a key string; raises UnknownKeyError when it is not shaped like one."""
    layer, _, rest = text.partition("-") if isinstance(text, str) else ("", "", "")
    label, dash, digest = rest.rpartition("-")  # a layer has no dash, a digest none either
    if not (is_layer_name(layer) and f.is_hex(digest, 16) and (not dash or (label and set(label) <= _IN_LABEL))):
        raise UnknownKeyError(
            f"{text!r} is not a cache key (expected LAYER-LABEL-DIGEST, such as "
            "compile-sm90-cu130-vllm0.33.0-3f9a1c2b7e4d5a60)"
        )
    return layer, digest


def _label(layer: Layer, keyed: Facts) -> str:
    parts = []
    for part in layer.label:
        for name in (part,) if isinstance(part, str) else part:
            shown = _label_part(name, keyed.value(name, f.NONE))
            if shown:
                parts.append(shown)
                break
    dashed = (f.replace_runs(part.lower(), _SAFE_IN_LABEL, "-").strip("-") for part in parts)
    label = "-".join(part for part in dashed if part)
    return label[:_LABEL_LIMIT].strip("-.")


def _label_part(name: str, value: FactValue) -> str:
    if value == f.UNKNOWN:
        return ""
    text = "" if value in (f.NONE, None) else str(value)
    if name == f.GPU_ARCH:
        return text.replace("_", "") or "cpu"
    if not text:
        return text
    if name == f.CUDA_RUNTIME:
        return "" if text == "cpu" else "cu" + text.replace(".", "") if text[0].isdigit() else text
    if name in (f.VLLM, f.TORCH):
        return name + text.split("+")[0]
    if name == f.DRIVER:
        return "drv" + text
    if name == f.MODEL:
        return text.rsplit("/", 1)[-1]
    if name == f.MODEL_REVISION:
        return text[:8]
    return text


def _show(value: FactValue) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(thaw(value))
