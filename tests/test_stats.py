"""stats: counts and bytes per layer and model over a period, and the boot time saved."""

from __future__ import annotations

import uuid

from cachekeeper.records import Record
from cachekeeper.stats import stats

NOW = 1_800_000_000.0
DAY = 86400.0


def boot(model, seconds, kinds, *, at, host="h:1", size=0):
    """The events one boot records: one per layer, all carrying the boot's duration."""
    return [
        {
            "uid": uuid.uuid4().hex,
            "kind": kind,
            "layer": layer,
            "key": f"{layer}-x-0123456789abcdef",
            "model": model,
            "seconds": seconds,
            "at": at,
            "host": host,
            "bytes": size if kind == "published" else None,
        }
        for layer, kind in kinds.items()
    ]


def test_hits_builds_bytes_and_boot_time_saved(manifest):
    events = [
        *boot("org/a", 100.0, {"weights": "published", "compile": "published"}, at=NOW - 20 * DAY, size=1000),
        *boot("org/a", 80.0, {"weights": "hit", "compile": "published"}, at=NOW - 2 * DAY, size=500),
        *boot("org/a", 10.0, {"weights": "hit", "compile": "hit"}, at=NOW - DAY),
        *boot("org/a", 12.0, {"weights": "hit", "compile": "hit"}, at=NOW - DAY, host="h:2"),
        *boot("org/b", 5.0, {"compile": "hit"}, at=NOW - DAY),
        {"uid": "p1", "kind": "pruned", "layer": "compile", "model": "org/a", "bytes": 300, "at": NOW - DAY},
    ]
    manifest.fold([Record.from_json(event) for event in events], [], {})

    everything = stats(manifest, now=NOW)
    [a] = [m for m in everything.models if m.model == "org/a"]
    assert (a.boots, a.warm_boots, a.cold_boots, a.mean_cold_seconds, a.mean_warm_seconds) == (4, 2, 1, 100.0, 11.0)
    assert a.saved_seconds == (100 - 80) + (100 - 10) + (100 - 12)
    [b] = [m for m in everything.models if m.model == "org/b"]
    assert b.saved_seconds is None  # never seen cold: nothing to compare with
    rows = {(row.layer, row.model): row for row in everything.layers}
    compile_a = rows[("compile", "org/a")]
    assert (compile_a.hits, compile_a.builds, compile_a.built_bytes, compile_a.pruned_bytes) == (2, 2, 1500, 300)
    assert compile_a.hit_rate == 0.5

    week = stats(manifest, since=NOW - 7 * DAY, now=NOW)
    [a] = [m for m in week.models if m.model == "org/a"]
    # No cold boot this week: the cold baseline comes from all history.
    assert (a.boots, a.cold_boots, a.mean_cold_seconds) == (3, 0, 100.0)
    assert week.saved_seconds == a.saved_seconds == (100 - 80) + (100 - 10) + (100 - 12)
    assert {(r.layer, r.model): r.builds for r in week.layers}[("weights", "org/a")] == 0
