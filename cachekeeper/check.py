"""``check``: before a deploy, the key each layer will ask for and whether it is warm.

Facts come from three places, and the report says which fact came from where: what the target
declares; the model revision resolved to a commit sha; and, for what a deployer cannot know (the
driver, the exact GPU name), the newest fingerprint observed on the same GPU type. A key that
still needs a fact nobody told is *unverified*.

A deploy may land on several GPU types (``gpu = "H100"`` may run on an H200; see gpus.py), and a
cache built on one is no use, or worse, on another. So every landing is checked on its own: its
facts are inherited from a fingerprint seen on its own GPU type, never a sibling's, and each layer
gets one row per landing. A layer that keys no GPU fact (the weights) gets one row for all of
them when every landing derives the same key. The deploy is ready when every row is warm; with
``any_landing``, when each layer has at least one warm row (the other landings boot cold).

``explain_keys`` answers the question a stale layer raises: which facts differ between two keys.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from enum import StrEnum
from pathlib import Path
from typing import Any

from . import facts as f
from .cache import Cache
from .deploy import local_facts, resolved_revision, target_facts
from .errors import UnknownKeyError
from .facts import Fact, Facts
from .gpus import Landing
from .keys import CacheKey, FactChange, derive_keys, explain, parse_key
from .layers import DEFAULT_LAYERS, Layer, layer_named
from .leases import leases_for
from .liveness import Sightings, Witness
from .manifest import Manifest, Observation
from .quarantine import entries
from .store import read_sidecar
from .target import Target
from .values import Value

# The facts that differ from one GPU type to another: a layer keyed by none of them (the weights)
# is the same artifact on every landing.
_GPU_FACTS = (f.GPU_TYPE, f.GPU_NAME, f.GPU_ARCH, f.GPU_MEMORY, f.GPU_COUNT, f.DRIVER, f.DRIVER_BRANCH, f.CUDA_DRIVER)


class Status(StrEnum):
    WARM = "warm"  # published under exactly this key
    COLD = "cold"  # nothing for this layer and model yet
    STALE = "stale"  # something exists for this layer and model, under another key
    BUILDING = "building"  # a process that may still live holds the build lease for this key


class LayerReport(Value):
    """One row: a layer on one landing, or on all of them (``landing`` None) when its key is the
    same everywhere."""

    layer: str
    key: CacheKey
    status: Status
    nearest: str | None = None  # for a stale layer: the artifact it would have used
    changes: tuple[FactChange, ...] = ()  # what differs from ``nearest``
    landing: Landing | None = None
    reason: str | None = None  # why a layer is cold that was warm: its artifact was quarantined

    @property
    def needs_rebuild(self) -> bool:
        """Cold or stale: a warm-up would help (one being built will appear)."""
        return self.status in (Status.COLD, Status.STALE)

    def to_json(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "gpu": None if self.landing is None else self.landing.gpu.name,
            "gpu_count": None if self.landing is None else self.landing.gpu_count,
            "key": str(self.key),
            "status": str(self.status),
            "nearest": self.nearest,
            "changes": [change.to_json() for change in self.changes],
            "unverified": list(self.key.unverified),
            "reason": self.reason,
        }


class LandingFacts(Value):
    """What one landing's keys are made of, and the observation its inherited facts came from."""

    landing: Landing
    facts: Facts
    observation: Observation | None
    keys: Mapping[str, CacheKey]

    def unverified(self, layers: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(sorted({name for layer in layers for name in self.keys[layer].unverified}))

    def to_json(self, layers: tuple[str, ...]) -> dict[str, Any]:
        return {
            "gpu": self.landing.gpu.name,
            "gpu_count": self.landing.gpu_count,
            "facts": self.facts.to_json(),
            "unverified": list(self.unverified(layers)),
            "observation": _observation_json(self.observation),
        }


class CheckReport(Value):
    target: Target
    landings: tuple[LandingFacts, ...]
    layers: tuple[LayerReport, ...]
    any_landing: bool = False  # ready when each layer is warm on at least one landing

    @property
    def facts(self) -> Facts:
        """The first landing's facts."""
        return self.landings[0].facts

    @property
    def observation(self) -> Observation | None:
        """Where the first landing's inherited facts came from."""
        return self.landings[0].observation

    @property
    def ready(self) -> bool:
        if self.any_landing:
            return all(
                any(row.status is Status.WARM for row in self.layers if row.layer == name) for name in self.target.needs
            )
        return all(row.status is Status.WARM for row in self.layers)

    @property
    def needs_rebuild(self) -> bool:
        """Whether a warm-up would help: not ready, and a row is cold or stale."""
        return not self.ready and any(row.needs_rebuild for row in self.layers)

    @property
    def cold_landings(self) -> tuple[Landing, ...]:
        """The landings a warm-up should boot on: those with a cold or stale row. A layer the same
        on every landing (the weights) is built by any boot: the first landing's, unless another
        one boots anyway."""
        cold = [row.landing for row in self.layers if row.needs_rebuild and row.landing is not None]
        if not cold and any(row.needs_rebuild for row in self.layers):
            cold.append(self.landings[0].landing)
        return tuple(landing for landing in self.target.landings if landing in cold)

    @property
    def unverified(self) -> tuple[str, ...]:
        names = {name for report in self.layers for name in report.key.unverified}
        return tuple(sorted(names))

    def to_json(self) -> dict[str, Any]:
        return {
            "ready": self.ready,
            "any": self.any_landing,
            "target": self.target.source,
            "landings": [each.to_json(self.target.needs) for each in self.landings],
            "layers": [layer.to_json() for layer in self.layers],
            "facts": self.facts.to_json(),
            "unverified": list(self.unverified),
            "observation": _observation_json(self.observation),
        }


def _observation_json(observation: Observation | None) -> dict[str, Any] | None:
    if observation is None:
        return None
    return {"gpu_type": observation.gpu_type, "host": observation.host, "last_seen_at": observation.last_seen_at}


def check(target: Target, cache: Cache, *, any_landing: bool = False) -> CheckReport:
    """Report every layer the target needs on every landing, against the manifest as last folded."""
    hf_cache = cache.roots.hf_cache()
    landings = tuple(landing_facts(target, cache.manifest, hf_cache))
    rows: list[LayerReport] = []
    with Sightings(cache.manifest) as witness:  # is a lease still live? judged by this host's clock
        for name in target.needs:
            keys = [each.keys[name] for each in landings]
            if not _keys_gpu(layer_named(name, target.layers)) and len({str(key) for key in keys}) == 1:
                rows.append(_layer_report(name, keys[0], cache, None, witness))
            else:
                rows.extend(
                    _layer_report(name, key, cache, each.landing, witness)
                    for key, each in zip(keys, landings, strict=True)
                )
    return CheckReport(target, landings, tuple(rows), any_landing)


def landing_facts(target: Target, manifest: Manifest, hf_cache: Path | None) -> Iterator[LandingFacts]:
    """Each landing's facts and keys, inheriting from the newest fingerprint seen on its GPU type."""
    revision: Fact | None = resolved_revision(target, hf_cache)
    for landing in target.landings:
        observation = manifest.latest_observation(landing.gpu.name)
        inherited = observation.facts if observation else None
        facts = target_facts(target, inherited, hf_cache, landing=landing, revision=revision)
        yield LandingFacts(landing, facts, observation, derive_keys(facts, target.layers))


def _keys_gpu(layer: Layer) -> bool:
    return any(layer.selects(name) for name in _GPU_FACTS)


def _layer_report(layer: str, key: CacheKey, cache: Cache, landing: Landing | None, witness: Witness) -> LayerReport:
    root = cache.roots.for_layer(layer)
    if read_sidecar(root, layer, str(key)) is not None:
        return LayerReport(layer, key, Status.WARM, landing=landing)
    if leases_for(root, cache.manifest, witness=witness).holder(layer, str(key)) is not None:
        return LayerReport(layer, key, Status.BUILDING, landing=landing)
    quarantined = entries(cache.roots, key=str(key))
    if quarantined:  # cold whatever else exists: the next boot builds this key afresh
        entry = quarantined[0]
        reason = f"quarantined {entry.when()} after {entry.why()}"
        return LayerReport(layer, key, Status.COLD, landing=landing, reason=reason)
    model = str(key.facts.value(f.MODEL, f.NONE))
    nearest = cache.manifest.nearest(layer=layer, model=model, other_than=str(key))
    if nearest is not None:
        return LayerReport(layer, key, Status.STALE, nearest.key, explain(nearest.cache_key(), key), landing)
    return LayerReport(layer, key, Status.COLD, landing=landing)


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
        for each in landing_facts(target, cache.manifest, hf_cache):
            yield from ((str(k), k) for k in each.keys.values())
    yield from ((str(k), k) for k in derive_keys(local_facts(target, hf_cache), layers).values())
