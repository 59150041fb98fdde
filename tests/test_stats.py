"""stats: counts and bytes per layer and model over a period, and the boot time saved; and the
daily summaries of events older than the retention window, which keep every total."""

from __future__ import annotations

import math
import uuid

import pytest
from sqlalchemy import text

from cachekeeper.manifest import utc_day
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


# --- events beyond the retention window, kept as daily counts --------------------------------------


def _history():
    """Boots over 200 days (a build, then hits, on two models and two hosts) and some prunes."""
    events = []
    for day in range(200):
        at = NOW - day * DAY - 3600
        kinds = {"weights": "published", "compile": "published"} if day % 50 == 0 else {"weights": "hit"}
        events += boot("org/a", 90.0 if day % 50 == 0 else 9.0, kinds, at=at, size=1000 + day)
        if day % 3 == 0:
            events += boot("org/b", 20.0, {"compile": "miss"}, at=at + 60, host="h:2")
        if day % 7 == 0:
            events.append(
                {"uid": uuid.uuid4().hex, "kind": "pruned", "layer": "compile", "model": "org/a", "bytes": 7, "at": at}
            )
    events.append(
        {
            "uid": uuid.uuid4().hex,
            "kind": "observed",
            "at": NOW - 150 * DAY,
            "host": "h:1",
            "facts": {"gpu.type": {"value": "cpu", "source": "observed"}},
        }
    )
    return [Record.from_json(event) for event in events]


def _layers(report):
    return {(row.layer, row.model): row.to_json() for row in report.layers}


def test_old_events_become_daily_counts_and_every_total_stays_the_same(manifest):
    events = _history()
    manifest.fold(events, [], {})
    window_start = NOW - 30 * DAY
    midday = NOW - 120 * DAY
    periods = [None, math.floor(midday / DAY) * DAY, math.floor((NOW - 95 * DAY) / DAY) * DAY, window_start]
    before = [stats(manifest, since=since, now=NOW) for since in periods]

    cutoff = math.floor((NOW - 90 * DAY) / DAY) * DAY
    summarised = manifest.summarise_events(before=cutoff)
    old = [event for event in events if event.at < cutoff]
    assert summarised == len(old) and len(old) > 150
    assert manifest.events(kinds=None)[0].at >= cutoff  # no detailed event older than the window is left
    assert manifest.summarised_before() == cutoff

    # The summaries are exactly the events they replace, per day, kind, layer and model.
    expected = {}
    for event in old:
        group = (utc_day(event.at), str(event.kind), event.layer or "", event.model or "")
        count, size, seconds = expected.get(group, (0, 0, 0.0))
        expected[group] = (count + 1, size + (event.bytes or 0), seconds + (event.seconds or 0.0))
    with manifest.engine.connect() as connection:
        rows = connection.execute(text("SELECT day, kind, layer, model, count, bytes, seconds FROM event_summary"))
        assert {tuple(row[:4]): (row[4], row[5], pytest.approx(row[6])) for row in rows} == expected

    after = [stats(manifest, since=since, now=NOW) for since in periods]
    for old_report, new_report in zip(before, after, strict=True):
        assert _layers(new_report) == _layers(old_report)  # hits, misses, builds, bytes: unchanged
    # A summary has no hours: a period starting within a summarised day counts that whole day.
    assert _layers(stats(manifest, since=midday, now=NOW)) == _layers(before[1])
    # Inside the window, everything is as it was, boots included; beyond it, boots count only
    # what is still recorded one by one, and the report says so.
    assert after[-1].to_json() | {"detailed_since": None} == before[-1].to_json()
    assert not after[-1].partial_boots and after[0].partial_boots
    assert after[0].detailed_since == cutoff

    # Idempotent: nothing more to summarise.
    assert manifest.summarise_events(before=cutoff) == 0
    assert [_layers(stats(manifest, since=since, now=NOW)) for since in periods] == [_layers(r) for r in before]


def test_an_old_event_folded_late_is_counted_once(manifest):
    manifest.fold(_history(), [], {})
    cutoff = math.floor((NOW - 90 * DAY) / DAY) * DAY
    manifest.summarise_events(before=cutoff)
    before = _layers(stats(manifest, now=NOW))
    late = boot("org/a", 9.0, {"weights": "hit"}, at=NOW - 150 * DAY)  # a journal that waited 150 days
    manifest.fold([Record.from_json(event) for event in late], [], {})
    for _ in range(2):
        assert (
            _layers(stats(manifest, now=NOW))[("weights", "org/a")]["hits"] == before[("weights", "org/a")]["hits"] + 1
        )
        manifest.summarise_events(before=cutoff)
