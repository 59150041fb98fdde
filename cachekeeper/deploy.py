"""A deploy's facts: what a target says it will run, completed the same way everywhere.

A deployer cannot know everything a container will see. Facts a target leaves out are inherited
from a fingerprint observed on the same GPU type (``check``), or keyed as unknown where none is at
hand (a snapshot tag made at deploy time); the model revision is always resolved to a commit sha.
A target may land on several GPU types (gpus.py): its facts are those of one landing at a time.
At run time the observed facts are the truth: ``contradictions`` says where they differ from the
landing the process is on (``landing_of``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import facts as f
from .facts import Fact, Facts, Source
from .fingerprint import observe, resolve_revision
from .gpus import Landing
from .keys import CacheKey, FactChange, derive_keys
from .layers import DEFAULT_LAYERS
from .values import Value

if TYPE_CHECKING:
    from .target import Target


def target_facts(
    target: Target,
    inherited: Facts | None,
    hf_cache: Path | None,
    environ: Mapping[str, str] | None = None,
    *,
    landing: Landing | None = None,
    revision: Fact | None = None,
) -> Facts:
    """The facts of a deploy on ``landing`` (default: the target's first): declared facts over
    ``inherited`` ones (a fingerprint seen on that landing's GPU type, never a sibling's), with the
    model revision resolved to a sha in ``hf_cache`` or on the Hub (or ``revision``, resolved
    already by ``resolved_revision``: one lookup serves every landing)."""
    base = Facts(tuple(Fact(x.name, x.value, Source.INHERITED) for x in inherited)) if inherited else Facts()
    facts = base.merged(target.declared_facts(landing))
    if target.model is not None:
        facts = facts.merged(
            [revision or resolve_revision(target.model, target.revision or "main", hf_cache, _env(environ))]
        )
    return facts


def resolved_revision(target: Target, hf_cache: Path | None, environ: Mapping[str, str] | None = None) -> Fact | None:
    """The target's model revision as a commit sha (None without a model)."""
    if target.model is None:
        return None
    return resolve_revision(target.model, target.revision or "main", hf_cache, _env(environ))


def _env(environ: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if environ is None else environ


def landing_of(target: Target, observed: Facts) -> Landing:
    """The landing a running process is on: the one of its GPU type (and count, when several share
    the type), else the target's first (whose declared facts it then contradicts)."""
    gpu_type, count = observed.value(f.GPU_TYPE, f.NONE), observed.value(f.GPU_COUNT, 0)
    same_type = [landing for landing in target.landings if landing.gpu.name == gpu_type]
    same_count = [landing for landing in same_type if landing.gpu_count == count]
    return (same_count or same_type or [target.landings[0]])[0]


def local_facts(target: Target | None, hf_cache: Path) -> Facts:
    """This machine's facts, with the target's model, revision, engine arguments and image."""
    return observe(
        model=target.model if target else None,
        revision=target.revision if target else None,
        engine=target.engine if target else None,
        image=target.image if target else None,
        hf_cache=hf_cache,
    )


def declared_gpu_facts(target: Target | None) -> list[Fact]:
    """The GPU facts a target declares on its first landing (type, count, arch; the driver if it
    names one)."""
    return [fact for fact in (target.declared_facts() if target else []) if is_gpu_fact(fact.name)]


def is_gpu_fact(name: str) -> bool:
    return name.startswith(("gpu.", "driver.")) or name == f.CUDA_DRIVER


def contradictions(declared: Iterable[Fact], observed: Facts) -> tuple[FactChange, ...]:
    """Declared facts that the running process contradicts: declared value → observed value."""
    changes = []
    for fact in declared:
        seen = observed.get(fact.name)
        if seen is not None and seen.value != fact.value:
            changes.append(FactChange(fact.name, fact.value, seen.value))
    return tuple(changes)


class Fingerprint(Value):
    """This machine as a deploy of a target would see it: facts, every layer's key, and what
    contradicts the target."""

    facts: Facts
    keys: dict[str, CacheKey]
    mismatches: tuple[FactChange, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "facts": {fact.name: f.thaw(fact.value) for fact in self.facts},
            "sources": {fact.name: str(fact.source) for fact in self.facts},
            "keys": {layer: str(key) for layer, key in self.keys.items()},
            "mismatches": [change.to_json() for change in self.mismatches],
        }


def fingerprint(target: Target | None, hf_cache: Path) -> Fingerprint:
    facts = local_facts(target, hf_cache)
    keys = derive_keys(facts, target.layers if target else DEFAULT_LAYERS)
    mismatches = contradictions(target.declared_facts(landing_of(target, facts)), facts) if target else ()
    return Fingerprint(facts, keys, mismatches)
