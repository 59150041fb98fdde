"""``check``: before a deploy, the key each layer will ask for and whether it is warm.

Facts come from three places, and the report says which fact came from where: what the target
declares; the model revision resolved to a commit sha; and, for what a deployer cannot know (the
driver, the exact GPU name), the newest fingerprint observed on the same GPU type. A key that
still needs a fact nobody told is *unverified*.

``explain_keys`` answers the question a stale layer raises: which facts differ between two keys.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from . import facts as f
from .cache import Cache
from .deploy import local_facts, target_facts
from .errors import UnknownKeyError
from .facts import Facts
from .keys import CacheKey, FactChange, derive_keys, explain, parse_key
from .layers import DEFAULT_LAYERS
from .leases import leases_for
from .liveness import Sightings, Witness
from .manifest import Observation
from .store import read_sidecar
from .target import Target


class Status(StrEnum):
    WARM = "warm"  # published under exactly this key
    COLD = "cold"  # nothing for this layer and model yet
    STALE = "stale"  # something exists for this layer and model, under another key
    BUILDING = "building"  # a process that may still live holds the build lease for this key


@dataclass(frozen=True, slots=True)
class LayerReport:
    layer: str
    key: CacheKey
    status: Status
    nearest: str | None = None  # for a stale layer: the artifact it would have used
    changes: tuple[FactChange, ...] = ()  # what differs from ``nearest``

    def to_json(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "key": str(self.key),
            "status": str(self.status),
            "nearest": self.nearest,
            "changes": [change.to_json() for change in self.changes],
            "unverified": list(self.key.unverified),
        }


@dataclass(frozen=True, slots=True)
class CheckReport:
    target: Target
    facts: Facts
    layers: tuple[LayerReport, ...]
    observation: Observation | None  # where inherited facts came from

    @property
    def ready(self) -> bool:
        return all(report.status is Status.WARM for report in self.layers)

    @property
    def needs_rebuild(self) -> bool:
        """Whether a warm-up would help: a layer is cold or stale (one being built will appear)."""
        return any(layer.status in (Status.COLD, Status.STALE) for layer in self.layers)

    @property
    def unverified(self) -> tuple[str, ...]:
        names = {name for report in self.layers for name in report.key.unverified}
        return tuple(sorted(names))

    def to_json(self) -> dict[str, Any]:
        observation = self.observation
        return {
            "ready": self.ready,
            "target": self.target.source,
            "layers": [layer.to_json() for layer in self.layers],
            "facts": self.facts.to_json(),
            "unverified": list(self.unverified),
            "observation": None
            if observation is None
            else {"gpu_type": observation.gpu_type, "host": observation.host, "last_seen_at": observation.last_seen_at},
        }


def check(target: Target, cache: Cache) -> CheckReport:
    """Report every layer the target needs, against the manifest as last folded."""
    observation = cache.manifest.latest_observation(target.gpu.name)
    facts = target_facts(target, observation.facts if observation else None, cache.roots.hf_cache())
    keys = derive_keys(facts, target.layers)
    with Sightings(cache.manifest) as witness:  # is a lease still live? judged by this host's clock
        reports = tuple(_layer_report(name, keys[name], cache, witness) for name in target.needs)
    return CheckReport(target, facts, reports, observation)


def _layer_report(layer: str, key: CacheKey, cache: Cache, witness: Witness) -> LayerReport:
    root = cache.roots.for_layer(layer)
    if read_sidecar(root, layer, str(key)) is not None:
        return LayerReport(layer, key, Status.WARM)
    if leases_for(root, cache.manifest, witness=witness).holder(layer, str(key)) is not None:
        return LayerReport(layer, key, Status.BUILDING)
    model = str(key.facts.value(f.MODEL, f.NONE))
    nearest = cache.manifest.nearest(layer=layer, model=model, other_than=str(key))
    if nearest is not None:
        return LayerReport(layer, key, Status.STALE, nearest.key, explain(nearest.cache_key(), key))
    return LayerReport(layer, key, Status.COLD)


def explain_keys(old: str, new: str, target: Target | None, cache: Cache) -> tuple[FactChange, ...]:
    """The facts that differ between two keys, looked up among recorded artifacts and the keys the
    target and this machine derive."""
    parse_key(old)
    parse_key(new)
    known = dict(_known_keys(target, cache, {old, new}))
    for key in (old, new):
        if key not in known:
            raise UnknownKeyError(
                f"key {key} is unknown: it is not in the manifest, and neither the target nor this machine derives it"
            )
    return explain(known[old], known[new])


def _known_keys(target: Target | None, cache: Cache, wanted: set[str]) -> Iterator[tuple[str, CacheKey]]:
    for key in wanted:
        artifact = cache.manifest.artifact(key)
        if artifact is None:
            layer, _ = parse_key(key)
            artifact = read_sidecar(cache.roots.for_layer(layer), layer, key)
        if artifact is not None:
            yield key, artifact.cache_key()
    layers = target.layers if target else DEFAULT_LAYERS
    hf_cache = cache.roots.hf_cache()
    if target is not None:
        observation = cache.manifest.latest_observation(target.gpu.name)
        facts = target_facts(target, observation.facts if observation else None, hf_cache)
        yield from ((str(k), k) for k in derive_keys(facts, layers).values())
    yield from ((str(k), k) for k in derive_keys(local_facts(target, hf_cache), layers).values())
