"""``check``: before a deploy, the key each layer will ask for and whether it is warm.

Facts come from three places, and the report says which fact came from where: what the target
declares; the model revision resolved to a commit sha; and, for what a deployer cannot know (the
driver, the exact GPU name), the newest fingerprint observed on the same GPU type. A key that
still needs a fact nobody told is *unverified*.

``explain_keys`` answers the question a stale layer raises: which facts differ between two keys.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum

from . import facts as f
from .errors import UnknownKeyError
from .facts import Fact, Facts, Source
from .keys import CacheKey, FactChange, derive_keys, explain, parse_key
from .layers import DEFAULT_LAYERS, WEIGHTS
from .leases import leases_for
from .manifest import Manifest, Observation
from .store import Roots, read_sidecar
from .sync import refresh
from .target import Target


class Status(StrEnum):
    WARM = "warm"  # published under exactly this key
    COLD = "cold"  # nothing for this layer and model yet
    STALE = "stale"  # something exists for this layer and model, under another key
    BUILDING = "building"  # a live process holds the build lease for this key


@dataclass(frozen=True, slots=True)
class LayerReport:
    layer: str
    key: CacheKey
    status: Status
    nearest: str | None = None  # for a stale layer: the artifact it would have used
    changes: tuple[FactChange, ...] = ()  # what differs from ``nearest``


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
    def unverified(self) -> tuple[str, ...]:
        names = {name for report in self.layers for name in report.key.unverified}
        return tuple(sorted(names))


def needs_rebuild(report: CheckReport) -> bool:
    """Whether a warm-up would help: a layer is cold or stale (one being built will appear)."""
    return any(layer.status in (Status.COLD, Status.STALE) for layer in report.layers)


def target_facts(
    target: Target, observation: Observation | None, roots: Roots, environ: Mapping[str, str] | None = None
) -> Facts:
    """Declared facts over inherited ones, with the model revision resolved to a sha."""
    environ = os.environ if environ is None else environ
    inherited = (
        Facts(tuple(Fact(x.name, x.value, Source.INHERITED) for x in observation.facts))
        if observation is not None
        else Facts()
    )
    facts = inherited.merged(target.declared_facts())
    if target.model is not None:
        hf_cache = roots.for_layer(WEIGHTS).layer_dir(WEIGHTS)
        resolved = f.resolve_revision(target.model, target.revision or "main", hf_cache, environ)
        facts = facts.merged([resolved])
    return facts


def local_facts(target: Target | None, roots: Roots) -> Facts:
    """This machine's facts, with the target's model, revision, engine arguments and image."""
    return f.observe(
        model=target.model if target else None,
        revision=target.revision if target else None,
        engine=target.engine if target else None,
        image=target.image if target else None,
        hf_cache=roots.for_layer(WEIGHTS).layer_dir(WEIGHTS),
    )


def check(target: Target, roots: Roots, manifest: Manifest) -> CheckReport:
    """Fold what containers recorded (unless the root is read-only), then report every layer the
    target needs."""
    refresh(manifest, roots)
    observation = manifest.latest_observation(target.gpu.name)
    facts = target_facts(target, observation, roots)
    keys = derive_keys(facts, target.layers)
    reports = tuple(_layer_report(name, keys[name], roots, manifest) for name in target.needs)
    return CheckReport(target, facts, reports, observation)


def _layer_report(layer: str, key: CacheKey, roots: Roots, manifest: Manifest) -> LayerReport:
    root = roots.for_layer(layer)
    if read_sidecar(root, layer, str(key)) is not None:
        return LayerReport(layer, key, Status.WARM)
    if leases_for(root, manifest).holder(layer, str(key)) is not None:
        return LayerReport(layer, key, Status.BUILDING)
    model = str(key.facts.value(f.MODEL, f.NONE))
    nearest = manifest.nearest(layer=layer, model=model, other_than=str(key))
    if nearest is not None:
        return LayerReport(layer, key, Status.STALE, nearest.key, explain(nearest.cache_key(), key))
    return LayerReport(layer, key, Status.COLD)


def explain_keys(old: str, new: str, target: Target | None, roots: Roots, manifest: Manifest) -> tuple[FactChange, ...]:
    """The facts that differ between two keys, looked up among recorded artifacts and the keys the
    target and this machine derive."""
    parse_key(old)
    parse_key(new)
    known = dict(_known_keys(target, roots, manifest, {old, new}))
    for key in (old, new):
        if key not in known:
            raise UnknownKeyError(
                f"key {key} is unknown: it is not in the manifest, and neither the target nor this machine derives it"
            )
    return explain(known[old], known[new])


def _known_keys(target: Target | None, roots: Roots, manifest: Manifest, wanted: set[str]) -> Iterator[tuple[str, CacheKey]]:
    refresh(manifest, roots)
    for key in wanted:
        artifact = manifest.artifact(key)
        if artifact is None:
            layer = key.split("-", 1)[0]
            artifact = read_sidecar(roots.for_layer(layer), layer, key)
        if artifact is not None:
            yield key, artifact.cache_key()
    layers = target.layers if target else DEFAULT_LAYERS
    if target is not None:
        observation = manifest.latest_observation(target.gpu.name)
        yield from ((str(k), k) for k in derive_keys(target_facts(target, observation, roots), layers).values())
    yield from ((str(k), k) for k in derive_keys(local_facts(target, roots), layers).values())
