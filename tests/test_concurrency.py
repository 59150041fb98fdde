"""Many processes writing one manifest at once: no row lost, none applied twice, none deleted twice.

Every race here is between real processes released at the same moment (``tests/workers.py``); the
outcome rests on the database's own guarantees, so nothing waits or sleeps.
"""

from __future__ import annotations

import math
import os
import random
import time
import uuid

import pytest
from sqlalchemy import func, select, text

from cachekeeper.journal import Journal, read_journal
from cachekeeper.manifest import Manifest, utc_day
from cachekeeper.manifest.migration import lock_id
from cachekeeper.records import Kind, Record
from cachekeeper.store import DELETING, Root, publish, read_sidecar, unpublish

from .helpers import artifact, facts
from .workers import Workers, run_workers

# Every test starts several worker processes (tests/workers.py) that race on one manifest.
pytestmark = pytest.mark.slow


def test_8_processes_registering_500_artifacts_each_lose_none(postgresql_url):
    manifest = Manifest.open(postgresql_url)
    args = [{"keys": [f"compile-w{worker}-{n:016x}" for n in range(500)]} for worker in range(8)]
    indexed = run_workers("register", postgresql_url, args)
    assert indexed == [500] * 8
    with manifest.engine.connect() as connection:
        assert connection.execute(text("select count(*), count(distinct key) from artifact")).one() == (4000, 4000)


def test_processes_racing_for_the_same_keys_index_each_exactly_once(db_url):
    manifest = Manifest.open(db_url)
    keys = [f"compile-shared-{n:016x}" for n in range(150)]
    indexed = run_workers("register", db_url, [{"keys": random.Random(w).sample(keys, len(keys))} for w in range(4)])
    assert sum(indexed) == len(keys)
    assert sorted(a.key for a in manifest.artifacts()) == keys


def test_processes_folding_the_same_journals_at_once_apply_each_record_once(db_url):
    """Several ``sync`` runs folding the same journals at once, each in batches of its own."""
    manifest = Manifest.open(db_url)
    now = time.time()
    environments = [facts(driver__version=f"580.{n}").to_json() for n in range(3)]
    keys = [f"compile-k-{n:016x}" for n in range(30)]
    records = [
        {"uid": uuid.uuid4().hex, "kind": "observed", "at": now - n, "host": f"h:{n}", "facts": environments[n % 3]}
        for n in range(60)
    ] + [
        {"uid": uuid.uuid4().hex, "kind": "hit", "at": now + n, "host": "h:1", "key": keys[n % 30], "layer": "compile"}
        for n in range(300)
    ]

    def batches(seed: int) -> list[dict]:
        """Every record, in an order and grouping of this process's own; the artifacts come first,
        as they are published before anything hits them."""
        shuffled = random.Random(seed).sample(records, len(records))
        artifacts = random.Random(seed).sample(keys, len(keys))
        return [
            {
                "records": shuffled[start : start + 40],
                "artifacts": artifacts if start == 0 else [],
                "cursors": {"journal-a": [start, False], "journal-b": [len(records) - start, start > 200]},
            }
            for start in range(0, len(records), 40)
        ]

    applied = run_workers("fold", db_url, [{"batches": batches(seed)} for seed in range(4)])
    assert sum(records_applied for records_applied, _ in applied) == len(records)
    assert sum(artifacts_indexed for _, artifacts_indexed in applied) == len(keys)
    assert manifest.count_events("observed") == 60 and manifest.count_events("hit") == 300
    with manifest.engine.connect() as connection:  # 20 sightings of each, none lost to a race
        assert sorted(connection.execute(text("select seen from observation")).scalars()) == [20, 20, 20]
    latest = manifest.latest_observation("H100")
    assert (latest.facts.value("driver.version"), latest.host, latest.last_seen_at) == ("580.0", "h:0", now)
    assert {a.key: a.last_used_at for a in manifest.artifacts()} == {key: now + 270 + n for n, key in enumerate(keys)}
    assert manifest.journal_cursors() == {"journal-a": (320, False), "journal-b": (360, True)}


def test_processes_pruning_at_once_remove_each_artifact_exactly_once(db_url, root):
    manifest = Manifest.open(db_url)
    old = time.time() - 86400
    keys = [f"compile-p-{n:016x}" for n in range(24)]
    for key in keys:
        record = artifact(key, relpath=f"compile/{key}", created_at=old, last_used_at=old)
        (root / record.relpath).mkdir(parents=True)
        (root / record.relpath / "data").write_bytes(b"x")
        publish(Root(root), record)
        manifest.record_artifact(record)
    for key in keys[:4]:  # left half removed by a prune that was killed
        manifest.set_state(key, DELETING)
        unpublish(Root(root), "compile", key)
    removed = run_workers("prune", db_url, [{"root": str(root)}] * 4)
    assert sorted(key for keys_removed in removed for key in keys_removed) == keys
    assert manifest.count_events("pruned") == len(keys)
    assert manifest.artifacts(state=None) == []
    assert not any((root / "compile" / key).exists() or read_sidecar(Root(root), "compile", key) for key in keys)


DAY = 86400.0
NOW = 1_800_000_000.0


def _summaries(manifest: Manifest) -> dict[tuple[str, str, str, str], tuple[int, int]]:
    with manifest.engine.connect() as connection:
        rows = connection.execute(text("select day, kind, layer, model, count, bytes from event_summary"))
        return {tuple(row[:4]): (row[4], row[5]) for row in rows}


def _expected(records: list[dict], before: float) -> dict[tuple[str, str, str, str], tuple[int, int]]:
    expected: dict[tuple[str, str, str, str], tuple[int, int]] = {}
    for record in records:
        if record["at"] < before:
            group = (utc_day(record["at"]), record["kind"], record["layer"], record["model"])
            count, size = expected.get(group, (0, 0))
            expected[group] = (count + 1, size + record["bytes"])
    return expected


def test_processes_summarising_at_once_count_each_event_once(db_url):
    manifest = Manifest.open(db_url)
    kinds = ("hit", "miss", "published", "pruned")
    records = [
        {
            "uid": uuid.uuid4().hex,
            "kind": kinds[n % 4],
            "at": NOW - (n % 150) * DAY - n,
            "layer": ("weights", "compile")[n % 2],
            "key": f"compile-k-{n % 7:016x}" if n % 2 else f"weights-k-{n % 7:016x}",
            "model": f"org/m{n % 3}",
            "bytes": n,
        }
        for n in range(3000)
    ]
    manifest.fold([Record.from_json(record) for record in records], [], {})
    before = math.floor((NOW - 90 * DAY) / DAY) * DAY
    done = run_workers("summarise", db_url, [{"before": before}] * 4)
    old = sum(record["at"] < before for record in records)
    assert sum(done) == old > 1000  # every old event summarised by exactly one process
    assert _summaries(manifest) == _expected(records, before)
    assert len(manifest.events()) == len(records) - old


def test_two_syncs_tidying_at_once_lose_nothing_and_count_nothing_twice(db_url, root):
    """``cachekeeper sync`` in two processes at once over the same journals: both fold, compact
    and summarise; every record is kept in a journal, and counted once in the manifest."""
    records = []
    for n in range(60):  # a journal a day for 60 of the last 150 days, closed and not yet folded
        writer = Journal(Root(root))
        made = [
            Record.new(Kind.HIT, layer="compile", key=f"compile-k-{n:016x}", model="org/m", bytes=i)._replace(
                at=NOW - n * 2.5 * DAY - i
            )
            for i in range(5)
        ]
        writer.extend(made)
        writer.close()
        os.utime(writer.path, (made[0].at, made[0].at))
        records += [
            {"uid": r.uid, "at": r.at, "kind": "hit", "layer": "compile", "model": "org/m", "bytes": r.bytes}
            for r in made
        ]
    tidied = run_workers("tidy", db_url, [{"root": str(root), "now": NOW}] * 2)
    manifest = Manifest.open(db_url)
    before = tidied[0]["summarised_before"]
    assert sum(report["events_summarised"] for report in tidied) == sum(r["at"] < before for r in records)
    assert _summaries(manifest) == _expected(records, before)
    assert sorted(event.at for event in manifest.events()) == sorted(r["at"] for r in records if r["at"] >= before)
    folded = root / ".cachekeeper" / "journal" / "folded"
    kept = [rec.uid for path in folded.glob("*.jsonl") for rec in read_journal(path).records if rec.kind is Kind.HIT]
    assert set(kept) == {r["uid"] for r in records}  # maybe twice, never lost
    # The next sync leaves one file per past day, and drops every compacted journal's cursor row.
    run_workers("tidy", db_url, [{"root": str(root), "now": NOW}])
    days = [path.name[len("compacted-") :][:10] for path in folded.glob("compacted-*.jsonl")]
    assert len(days) == len(set(days)) == len({utc_day(r["at"]) for r in records if utc_day(r["at"]) < utc_day(NOW)})
    assert set(manifest.journal_cursors()) <= {path.name for path in folded.glob("*.jsonl")}
    assert _summaries(manifest) == _expected(records, before)


def test_processes_opening_an_empty_database_at_once_make_the_schema_once(db_url):
    revisions = run_workers("open_manifest", db_url, [{}] * 4)
    manifest = Manifest.connect(db_url)
    assert revisions == [manifest.head()] * 4 and manifest.current() == manifest.head()


def test_one_claim_at_a_time_and_a_claim_left_behind_is_taken_over(postgresql_url):
    first, second = Manifest.open(postgresql_url), Manifest.open(postgresql_url)
    record = artifact()
    first.record_artifact(record)
    with first.claim_removals([record.key]) as claimed:
        assert claimed == {record.key} and first.keys_in_state(DELETING) == [("compile", record.key)]
    # Claimed and marked, then released without forgetting: a prune that failed half way.
    with second.claim_removals([record.key]) as taken_over:
        assert taken_over == {record.key}
        with first.claim_removals([record.key]) as also:
            assert not also
        second.forget(record.key)
    with first.claim_removals([record.key]) as gone:
        assert not gone


def test_a_prune_killed_while_it_holds_a_claim_frees_it_with_its_process(postgresql_url):
    manifest = Manifest.open(postgresql_url)
    record = artifact()
    manifest.record_artifact(record)
    holder = Workers("hold_claim", postgresql_url, [{"key": record.key}])
    try:
        assert holder.next_result(timeout=60) == (0, True)
        with manifest.claim_removals([record.key]) as claimed:
            assert not claimed
    finally:
        holder.kill()
    # The server ends a dead client's session when its socket closes: wait for that lock to go.
    with manifest.engine.connect() as connection:
        connection.execute(text("set statement_timeout = '60s'"))
        connection.execute(select(func.pg_advisory_lock(lock_id(f"remove {record.key}"))))
        connection.execute(select(func.pg_advisory_unlock(lock_id(f"remove {record.key}"))))
    with manifest.claim_removals([record.key]) as claimed:
        assert claimed == {record.key} and manifest.keys_in_state(DELETING) == [("compile", record.key)]
