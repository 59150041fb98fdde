"""``stats``: what the cache did over a period, from the events the runtime and prune record.

Per layer and model: hits, misses, builds (published artifacts), bytes built and pruned, and
what is stored now. Per model: boots, and the boot time the cache saved.

Events older than the window ``sync`` keeps (90 days by default) survive only as daily counts per
kind, layer and model (``event_summary``): the per-layer counts and bytes include them, whole UTC
days at a time, so their totals never change; boots and boot time saved need each boot's events,
and count only the boots still recorded one by one (``Stats.detailed_since`` says from when).

Every event of one boot carries that boot's duration (``activate()`` entry to exit) in
``seconds``, so a boot is the set of events sharing host, model and duration. A boot in which no
layer hit is *cold*; the time a boot with hits saved is the mean cold boot of its model minus its
own, taken over all recorded history when the period has no cold boot of that model.

The *inner-miss rate* of a model is the share of its compile hits in which vLLM compiled anew
inside the artifact all the same (``inner_miss`` events): the fleet's own measure of whether the
compile key is as fine as vLLM's. Anything but zero names a factor the key misses, or one that
differs per pod (``cachekeeper inspect KEY`` shows which).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .budget import RootFiles, files_per_root
from .layers import COMPILE
from .manifest import Event, EventCount, Manifest, Stored
from .records import BOOT_KINDS, Kind
from .store import Roots
from .target import DEFAULT_FILE_BUDGET
from .values import Value

HIT, MISS, PUBLISHED, PRUNED, INNER_MISS = Kind.HIT, Kind.MISS, Kind.PUBLISHED, Kind.PRUNED, Kind.INNER_MISS


class LayerStats(Value):
    layer: str
    model: str
    hits: int
    misses: int  # boots that found nothing and built nothing shared (or another process was building)
    builds: int
    built_bytes: int
    pruned: int
    pruned_bytes: int
    stored: int  # artifacts there now
    stored_bytes: int
    stored_files: int  # as recorded at publish (and by verify)

    @property
    def hit_rate(self) -> float | None:
        uses = self.hits + self.misses + self.builds
        return self.hits / uses if uses else None

    def to_json(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "model": self.model,
            "hits": self.hits,
            "misses": self.misses,
            "builds": self.builds,
            "hit_rate": self.hit_rate,
            "built_bytes": self.built_bytes,
            "pruned": self.pruned,
            "pruned_bytes": self.pruned_bytes,
            "stored": self.stored,
            "stored_bytes": self.stored_bytes,
            "stored_files": self.stored_files,
        }


class ModelStats(Value):
    model: str
    boots: int
    warm_boots: int  # every layer hit
    cold_boots: int  # no layer hit
    mean_cold_seconds: float | None  # over the period, else over all history
    mean_warm_seconds: float | None
    saved_seconds: float | None  # None when no cold boot of this model was ever recorded
    compile_hits: int = 0  # hits of layers where vLLM compiles (compile, and any that recorded an inner miss)
    inner_misses: int = 0  # of those, the ones in which vLLM compiled anew inside the artifact

    @property
    def inner_miss_rate(self) -> float | None:
        return self.inner_misses / self.compile_hits if self.compile_hits else None

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "boots": self.boots,
            "warm_boots": self.warm_boots,
            "cold_boots": self.cold_boots,
            "mean_cold_seconds": self.mean_cold_seconds,
            "mean_warm_seconds": self.mean_warm_seconds,
            "saved_seconds": self.saved_seconds,
            "compile_hits": self.compile_hits,
            "inner_misses": self.inner_misses,
            "inner_miss_rate": self.inner_miss_rate,
        }


class Stats(Value):
    since: float | None
    until: float
    layers: tuple[LayerStats, ...]
    models: tuple[ModelStats, ...]
    # Events before this are daily counts only: layer rows include them, model rows (boots, time
    # saved) do not. None when nothing was ever summarised.
    detailed_since: float | None = None
    roots: tuple[RootFiles, ...] = ()  # the files each root holds, against its budget

    @property
    def partial_boots(self) -> bool:
        """Whether the period reaches back before ``detailed_since``, so boots before it are not counted."""
        return self.detailed_since is not None and (self.since is None or self.since < self.detailed_since)

    @property
    def saved_seconds(self) -> float:
        return sum(model.saved_seconds or 0.0 for model in self.models)

    def to_json(self) -> dict[str, Any]:
        return {
            "since": self.since,
            "until": self.until,
            "saved_seconds": self.saved_seconds,
            "detailed_since": self.detailed_since,
            "layers": [row.to_json() for row in self.layers],
            "models": [row.to_json() for row in self.models],
            "roots": [root.to_json() for root in self.roots],
        }


def stats(
    manifest: Manifest,
    *,
    since: float | None = None,
    now: float | None = None,
    roots: Roots | None = None,
    max_files: int = DEFAULT_FILE_BUDGET,
) -> Stats:
    """Statistics of the events at or after ``since`` (Unix seconds; None: all of them), and of
    the daily summaries of older events from the UTC day of ``since`` on; with ``roots``, the
    files each holds against ``max_files``."""
    now = time.time() if now is None else now
    counted = manifest.event_counts(since=since, kinds=(*BOOT_KINDS, PRUNED, INNER_MISS))
    events = manifest.events(since=since, kinds=BOOT_KINDS)
    history = manifest.events(kinds=BOOT_KINDS) if since is not None else events
    return Stats(
        since,
        now,
        _layer_stats(counted, manifest.stored()),
        _model_stats(events, history, _inner_misses(counted)),
        manifest.summarised_before(),
        files_per_root(manifest, roots, max_files) if roots is not None else (),
    )


def _layer_stats(counted: Iterable[EventCount], stored: Mapping[tuple[str, str], Stored]) -> tuple[LayerStats, ...]:
    counts: dict[tuple[str, str], dict[str, int]] = {}
    for row in counted:
        if row.kind == INNER_MISS:
            continue  # a model's measure, counted by _inner_misses
        group = counts.setdefault((row.layer or "-", row.model or "-"), {})
        group[row.kind] = group.get(row.kind, 0) + row.events
        if row.kind in (PUBLISHED, PRUNED):
            group[f"{row.kind}_bytes"] = group.get(f"{row.kind}_bytes", 0) + row.bytes
    rows = []
    for layer, model in sorted(counts.keys() | stored.keys()):
        group = counts.get((layer, model), {})
        held = stored.get((layer, model), Stored(0, 0, 0))
        rows.append(
            LayerStats(
                layer,
                model,
                group.get(HIT, 0),
                group.get(MISS, 0),
                group.get(PUBLISHED, 0),
                group.get("published_bytes", 0),
                group.get(PRUNED, 0),
                group.get("pruned_bytes", 0),
                held.artifacts,
                held.bytes,
                held.files,
            )
        )
    return tuple(rows)


def _boots(events: Iterable[Event]) -> dict[str, list[tuple[float, bool, bool]]]:
    """Per model: (seconds, any layer hit, every layer hit) of each boot."""
    grouped: dict[tuple[str, str, float], list[str]] = {}
    for event in events:
        if event.kind in BOOT_KINDS and event.seconds is not None and event.model:
            grouped.setdefault((event.model, event.host or "", event.seconds), []).append(event.kind)
    boots: dict[str, list[tuple[float, bool, bool]]] = {}
    for (model, _, seconds), kinds in grouped.items():
        boots.setdefault(model, []).append((seconds, HIT in kinds, all(kind == HIT for kind in kinds)))
    return boots


def _inner_misses(counted: Sequence[EventCount]) -> dict[str, tuple[int, int]]:
    """Per model: (hits of layers where vLLM compiles, inner misses among them)."""
    vllm_layers = {COMPILE} | {row.layer for row in counted if row.kind == INNER_MISS and row.layer}
    counts: dict[str, tuple[int, int]] = {}
    for row in counted:
        if row.model and row.layer in vllm_layers and row.kind in (HIT, INNER_MISS):
            hits, misses = counts.get(row.model, (0, 0))
            counts[row.model] = (hits + row.events * (row.kind == HIT), misses + row.events * (row.kind == INNER_MISS))
    return counts


def _model_stats(
    events: list[Event], history: list[Event], inner: Mapping[str, tuple[int, int]]
) -> tuple[ModelStats, ...]:
    period, everything = _boots(events), _boots(history)
    rows = []
    for model, boots in sorted(period.items()):
        cold = [seconds for seconds, hit, _ in boots if not hit]
        warm = [seconds for seconds, _, all_hit in boots if all_hit]
        baseline = cold or [seconds for seconds, hit, _ in everything.get(model, []) if not hit]
        mean_cold = sum(baseline) / len(baseline) if baseline else None
        saved = None if mean_cold is None else sum(max(0.0, mean_cold - seconds) for seconds, hit, _ in boots if hit)
        hits, misses = inner.get(model, (0, 0))
        rows.append(
            ModelStats(
                model,
                len(boots),
                len(warm),
                len(cold),
                mean_cold,
                sum(warm) / len(warm) if warm else None,
                saved,
                hits,
                misses,
            )
        )
    return tuple(rows)
