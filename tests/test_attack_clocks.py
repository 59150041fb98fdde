"""Attack: clocks trusted across machines (audit finding 10). A container whose clock runs minutes
or days behind (or ahead) writes use records, leases, build files and observations stamped with
its own time. Whether a record is dead is judged by the observer's own clock only: a record is
stale once it has not changed for a TTL of the observer's time. And no timestamp from another
machine outranks the folder's clock: an observation stamped 30 days ahead is not "the newest"
once a newer one is folded, and a hit from the future does not keep an artifact "recently used".

Writers' clocks are skewed by an injected clock (the server process replaces ``time.time``); the
observer's by the ``now`` that prune, the leftovers cleanup and folding take.
"""

from __future__ import annotations

import os
import signal
import time
import uuid

import pytest

import cachekeeper
from cachekeeper import uses
from cachekeeper.facts import Facts, Source
from cachekeeper.leftovers import LEFTOVER_AGE, clear_leftovers
from cachekeeper.manifest import Manifest, default_url
from cachekeeper.prune import PrunePolicy, execute_prune, plan_prune
from cachekeeper.records import Kind, Record
from cachekeeper.runtime import PRIVATE
from cachekeeper.store import Root, Roots

from .adversary import invoke
from .helpers import DAY, H100_FACTS, Server, put, tree
from .workers import run_workers

MINUTES, DAYS = 10 * 60.0, 3 * DAY
SKEWS = {"minutes behind": -MINUTES, "minutes ahead": MINUTES, "days behind": -DAYS, "days ahead": DAYS}


@pytest.fixture(autouse=True)
def no_uses_left():
    yield
    uses.release_all()


def _prune(root, now: float) -> list[str]:
    """``prune --older-than 0s`` by a prune host whose clock reads ``now``; the keys it removed."""
    manifest, roots = Manifest.open(default_url(Roots.at(root))), Roots.at(root)
    plan = plan_prune(manifest, roots, PrunePolicy.of(older_than=0), now=now)
    return [a.key for a in execute_prune(plan, manifest, roots, now=now).removed]


@pytest.mark.slow
@pytest.mark.parametrize("skew", sorted(SKEWS))
def test_a_use_from_a_skewed_clock_keeps_its_artifact_until_it_stops_changing(root, skew):
    # A server whose clock is off by ``skew`` renews its use five times a second (a test cannot
    # wait the real 75 s); its content, not its times, is what the prune host compares.
    server = Server(root, offset=SKEWS[skew], renew=0.2)
    try:
        assert server.status() == "build"
        server.ask("write 0")
        assert server.ask("finish")["published"] == {"compile": True}
        key, directory = server.key(), server.path()
        before = tree(directory)
        # The real command, on the real clock: kept.
        outcome = invoke("--root", str(root), "prune", "--older-than", "0s", "--yes")
        assert outcome.code == 0 and key in outcome.out, outcome
        assert tree(directory) == before

        now = time.time()
        for step in range(1, 4):  # prune host's clock a USE_TTL on each time; the server renews meanwhile
            time.sleep(0.5)
            assert _prune(root, now + step * (uses.USE_TTL + 1)) == []
        assert tree(directory) == before and server.ask("check")["missing"] == []

        # Frozen: its use stops changing (after one more renewal, which no prune has seen). Noted by
        # one prune, gone by one a USE_TTL later.
        time.sleep(0.5)
        os.kill(server.process.pid, signal.SIGSTOP)
        time.sleep(0.5)  # any write under way lands
        later = now + 10 * (uses.USE_TTL + 1)
        assert _prune(root, later) == []
        assert _prune(root, later + uses.USE_TTL - 1) == []  # not yet a TTL unchanged
        assert _prune(root, later + uses.USE_TTL) == [key]
    finally:
        os.kill(server.process.pid, signal.SIGCONT)
        server.kill()


@pytest.mark.slow
@pytest.mark.parametrize("skew", sorted(SKEWS))
def test_a_builder_with_a_skewed_clock_keeps_its_lease_while_it_renews(root, skew):
    builder = Server(root, offset=SKEWS[skew], lease_ttl=0.6)
    try:
        assert builder.status() == "build"
        builder.ask("write 0")
        before = tree(builder.path())
        # A boot that waits, watching the lease for longer than its TTL: it keeps changing.
        with cachekeeper.activate(root, layers=["compile"], lease_ttl=0.6, wait_timeout=2.5) as ck:
            assert ck.layers["compile"].status == PRIVATE
        assert tree(builder.path()) == before
        assert builder.ask("finish")["published"] == {"compile": True}  # never lost it
    finally:
        builder.stop()


@pytest.mark.parametrize("age_days", [30, -30])
def test_an_unfinished_build_stamped_by_a_skewed_clock_goes_only_once_unchanged_for_leftover_age(root, age_days):
    """A build whose files carry another machine's times (a month back, or ahead), and whose
    builder cannot be seen from here (its lease in a Modal Dict)."""
    key = "compile-sm90-00000000000000ab"
    directory = root / "compile" / key
    (directory / "inductor").mkdir(parents=True)
    (directory / "inductor" / "kernel").write_text("half built")
    stamp = time.time() + age_days * DAY
    for path in (directory, directory / "inductor", directory / "inductor" / "kernel"):
        os.utime(path, (stamp, stamp))
    manifest, roots, now = Manifest.open(default_url(Roots.at(root))), Roots.at(root), time.time()
    assert clear_leftovers(manifest, roots, now=now).partial_builds == ()  # first sight
    assert clear_leftovers(manifest, roots, now=now + LEFTOVER_AGE - 1).partial_builds == ()
    (directory / "inductor" / "more").write_text("the builder is at work")  # it changed: first sight again
    os.utime(directory / "inductor" / "more", (stamp, stamp))
    assert clear_leftovers(manifest, roots, now=now + LEFTOVER_AGE).partial_builds == ()
    assert clear_leftovers(manifest, roots, now=now + 2 * LEFTOVER_AGE - 1).partial_builds == ()
    assert directory.is_dir()
    assert clear_leftovers(manifest, roots, now=now + 2 * LEFTOVER_AGE).partial_builds == (f"compile/{key}",)
    assert not directory.exists()


def test_a_use_record_stamped_by_any_clock_is_judged_by_the_prune_hosts_clock(root, manifest):
    """Records as a skewed writer leaves them, expired or far from it by its own times."""
    artifact = put(root, manifest, "compile-sm90-00000000000000cd", age_days=30)
    directory = Root(root).uses_dir("compile", artifact.key)
    directory.mkdir(parents=True)
    for name, at in {"behind": time.time() - DAYS, "ahead": time.time() + DAYS}.items():
        record = f'{{"owner": "elsewhere:1", "since": {at}, "expires_at": {at + 300}, "beat": 1}}'
        (directory / f"{name}.json").write_text(record)
    roots, now = Roots.at(root), time.time()

    def prune(at: float) -> list[str]:
        plan = plan_prune(manifest, roots, PrunePolicy.of(older_than=0), now=at)
        return [a.key for a in execute_prune(plan, manifest, roots, now=at).removed]

    assert prune(now) == []  # first sight: live, whatever the times inside say
    assert prune(now + uses.USE_TTL - 1) == []
    (directory / "behind.json").write_text((directory / "behind.json").read_text().replace('"beat": 1', '"beat": 2'))
    assert prune(now + uses.USE_TTL) == []  # one changed: seen anew
    assert prune(now + 2 * uses.USE_TTL) == [artifact.key]  # unchanged for a TTL of the prune host's time


# --- observations and times of use: the folder's clock ------------------------------------------


def _observed(at: float, driver: str) -> Record:
    facts = Facts.from_values({**H100_FACTS, "driver.version": driver}, Source.OBSERVED)
    return Record(uuid.uuid4().hex, Kind.OBSERVED, at, facts=facts, host="container")


def test_an_observation_from_the_future_is_not_the_newest_once_a_newer_one_is_folded(manifest):
    now = time.time()
    manifest.fold([_observed(now + 30 * DAY, "570.00.01")], [], {}, now=now)
    assert manifest.latest_observation("H100").facts.value("driver.version") == "570.00.01"
    manifest.fold([_observed(now + 60, "580.159.04")], [], {}, now=now + 60)
    latest = manifest.latest_observation("H100")
    assert latest.facts.value("driver.version") == "580.159.04"
    assert latest.last_seen_at <= now + 60  # the folder's clock, not the container's
    # Seen again later by the clock that runs ahead: newest again, as folded then.
    manifest.fold([_observed(now + 30 * DAY + 120, "570.00.01")], [], {}, now=now + 120)
    assert manifest.latest_observation("H100").facts.value("driver.version") == "570.00.01"


def test_observations_folded_together_are_ordered_by_their_times_but_never_past_the_fold(manifest):
    now = time.time()
    records = [_observed(now - 100, "560.00.01"), _observed(now + 30 * DAY, "570.00.01"), _observed(now, "580.1")]
    manifest.fold(records, [], {}, now=now)
    # Both claim to be no earlier than the fold: the one from the future is capped to it, and so
    # ties with the honest one, which wins the tie by its uid order or not; both beat the past one.
    assert manifest.latest_observation("H100").facts.value("driver.version") in ("570.00.01", "580.1")
    assert manifest.latest_observation("H100").last_seen_at <= now


def test_a_hit_from_the_future_does_not_keep_an_artifact_recently_used(root, manifest):
    artifact = put(root, manifest, "compile-sm90-00000000000000ef", age_days=10)
    now = time.time()
    hit = Record(uuid.uuid4().hex, Kind.HIT, now + 30 * DAY, "compile", artifact.key, "org/m", "container")
    manifest.fold([hit], [], {}, now=now)
    assert manifest.artifact(artifact.key).last_used_at == pytest.approx(now)  # not 30 days ahead
    roots = Roots.at(root)
    plan = plan_prune(manifest, roots, PrunePolicy.of(older_than=DAY), now=now + 2 * DAY)
    assert [a.key for a in plan.removals] == [artifact.key]  # two days unused, by the folder's clock


def test_an_artifact_published_by_a_clock_ahead_is_not_used_in_the_future(root, manifest):
    artifact = put(root, manifest, "compile-sm90-0000000000000a01", age_days=-30)  # a builder 30 days ahead
    assert manifest.artifact(artifact.key).last_used_at <= time.time()


# --- the observer's memory: the manifest's sightings --------------------------------------------


def test_sightings_keep_the_first_sight_until_the_record_changes(manifest):
    assert manifest.record_sightings("host a", {"x": "1", "y": "1"}, 100.0) == {"x": 100.0, "y": 100.0}
    assert manifest.record_sightings("host a", {"x": "1", "y": "2"}, 200.0) == {"x": 100.0, "y": 200.0}
    assert manifest.record_sightings("host b", {"x": "1"}, 300.0) == {"x": 300.0}  # each observer its own
    assert manifest.record_sightings("host a", {}, 400.0, forget=["y"]) == {}
    assert {t: (s.digest, s.first_seen_at) for t, s in manifest.sightings("host a").items()} == {"x": ("1", 100.0)}
    assert set(manifest.sightings("host b", ["x", "z"])) == {"x"}


@pytest.mark.slow
def test_observers_on_one_host_seeing_the_same_records_at_once_agree_on_the_first_sight(db_url, manifest):
    things = [f"use /r/compile/k/{n}.json" for n in range(300)]
    answers = run_workers(
        "sight", db_url, [{"observer": "h", "things": things, "digest": "d", "now": 1000.0 + n} for n in range(6)]
    )
    first = manifest.sightings("h")
    assert len(first) == 300
    for answer in answers:  # whoever wrote first, all agree, and the table says the same
        assert answer == {thing: first[thing].first_seen_at for thing in things}
    changed = run_workers(
        "sight", db_url, [{"observer": "h", "things": things, "digest": "e", "now": 2000.0 + n} for n in range(6)]
    )
    assert all(len(set(answer.values())) == 1 and min(answer.values()) >= 2000.0 for answer in changed)


@pytest.mark.postgres
def test_a_read_only_servers_row_stamped_by_any_clock_is_judged_by_the_prune_hosts_clock(root, postgresql_url):
    """A read-only server registers its use as a row; a skewed one stamps it days ahead or behind."""
    from cachekeeper.manifest import served

    manifest = Manifest.open(postgresql_url)
    artifact = put(root, manifest, "compile-sm90-00000000000000ce", age_days=30)
    for token, at in {"behind": time.time() - DAYS, "ahead": time.time() + DAYS}.items():
        served.add(manifest, token, "compile", artifact.key, f"server-{token}", at)
    roots, now = Roots.at(root), time.time()

    def prune(at: float) -> list[str]:
        plan = plan_prune(manifest, roots, PrunePolicy.of(older_than=0), now=at)
        return [a.key for a in execute_prune(plan, manifest, roots, now=at).removed]

    assert prune(now) == []  # first sight: live, whatever the times inside say
    served.renew(manifest, ["behind"], time.time() - DAYS + 60)  # the server behind renews
    assert prune(now + uses.USE_TTL) == []
    assert manifest.rows("SELECT token FROM served", {}) == [("behind",)]  # the silent one lapsed
    assert prune(now + 2 * uses.USE_TTL) == [artifact.key]  # unchanged for a TTL of the prune host's time
    assert manifest.rows("SELECT token FROM served", {}) == []
