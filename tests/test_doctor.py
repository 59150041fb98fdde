"""doctor: a lost or damaged manifest is rebuilt from sidecars and journals (compacted ones too),
artifacts untouched, and events already summarised into daily counts never counted twice."""

from __future__ import annotations

import os
import time

import pytest
from sqlalchemy import text

import cachekeeper
from cachekeeper import uses
from cachekeeper.doctor import CREATED, HEALTHY, REPLACED, doctor
from cachekeeper.errors import SchemaTooNew
from cachekeeper.journal import Journal
from cachekeeper.manifest import Manifest
from cachekeeper.pins import set_pinned
from cachekeeper.prune import PrunePolicy, execute_prune, plan_prune
from cachekeeper.records import Kind, Record
from cachekeeper.stats import stats
from cachekeeper.store import DELETING, Root, Roots
from cachekeeper.sync import sync

from .helpers import DAY, tree


def boot(root, width, content=b"x"):
    with cachekeeper.activate(root, engine={"width": width}) as ck:
        (ck.layers["compile"].path / "inductor" / "k").write_bytes(content)
    return str(ck.keys["compile"])


def snapshot(manifest):
    rows = [(a.key, a.bytes, a.files, a.created_at, a.last_used_at, a.checksum) for a in manifest.artifacts(state=None)]
    return rows, manifest.pinned(), manifest.count_events("hit"), manifest.count_events("pruned")


@pytest.fixture
def sqlite_manifest(root):
    """Losing or damaging the manifest file is SQLite's case: a server database is restored from
    its backups, and doctor then reconciles it like any other."""
    url = f"sqlite:///{root / '.cachekeeper' / 'manifest.db'}"
    return Manifest.open(url), url


def test_a_deleted_manifest_is_rebuilt_as_it_was(root, sqlite_manifest):
    manifest, db_url = sqlite_manifest
    kept, gone = boot(root, 1), boot(root, 2)
    boot(root, 1)  # a hit: moves last_used_at
    uses.release_all()
    roots = Roots.at(root)
    sync(manifest, roots)
    set_pinned(manifest, roots, kept, pinned=True)
    execute_prune(plan_prune(manifest, roots, PrunePolicy.of(keys=[gone])), manifest, roots)
    before, files = snapshot(manifest), tree(root)
    manifest.engine.dispose()
    (root / ".cachekeeper" / "manifest.db").unlink()

    rebuilt, report = doctor(db_url, roots)
    assert report.manifest == CREATED and report.indexed == (kept,) and report.forgotten == ()
    assert snapshot(rebuilt) == before
    assert {k: v for k, v in tree(root).items() if "journal" not in k and "manifest.db" not in k} == {
        k: v for k, v in files.items() if "journal" not in k and "manifest.db" not in k
    }
    _, again = doctor(db_url, roots)
    assert again.manifest == HEALTHY and not again.changed


def test_a_damaged_manifest_is_moved_aside_and_replaced(root, sqlite_manifest):
    manifest, db_url = sqlite_manifest
    key = boot(root, 1)
    sync(manifest, Roots.at(root))
    manifest.engine.dispose()
    path = root / ".cachekeeper" / "manifest.db"
    damaged = path.read_bytes()[:2048] + b"\0garbage" * 512
    path.write_bytes(damaged)
    rebuilt, report = doctor(db_url, Roots.at(root))
    assert report.manifest == REPLACED and report.damage
    assert report.moved_to.read_bytes() == damaged  # kept for a post-mortem, never deleted
    assert [a.key for a in rebuilt.artifacts()] == [key]


def test_rows_without_sidecars_are_forgotten_and_nothing_is_deleted(root, manifest, db_url):
    lost, interrupted = boot(root, 1), boot(root, 2)
    sync(manifest, Roots.at(root))
    (Root(root).sidecar_path("compile", lost)).unlink()
    manifest.set_state(interrupted, DELETING)
    (Root(root).sidecar_path("compile", interrupted)).unlink()
    garbled = Root(root).sidecar_path("compile", "compile-x-00000000000000ff")
    garbled.write_text("{")
    before = tree(root)
    _, report = doctor(db_url, Roots.at(root))
    assert report.forgotten == (lost,) and report.unfinished == (interrupted,)
    assert report.unreadable == (garbled,)
    assert (root / "compile" / lost / "inductor" / "k").exists() and garbled.exists()
    assert {k: v for k, v in tree(root).items() if "journal" not in k} == {
        k: v for k, v in before.items() if "journal" not in k
    }


def test_a_manifest_of_a_newer_cachekeeper_is_refused_not_replaced(root, manifest, db_url):
    with manifest.engine.begin() as connection:
        connection.execute(text("update alembic_version set version_num = 'f00dfeed'"))
    manifest.engine.dispose()
    with pytest.raises(SchemaTooNew):
        doctor(db_url, Roots.at(root))
    assert not list((root / ".cachekeeper").glob("manifest.db.damaged-*"))


def _summaries(manifest):
    with manifest.engine.connect() as connection:
        return sorted(connection.execute(text("SELECT day, kind, layer, model, count, bytes FROM event_summary")))


def test_doctor_rebuilds_from_compacted_journals_and_never_counts_a_summarised_event_twice(root, sqlite_manifest):
    manifest, db_url = sqlite_manifest
    roots, now = Roots.at(root), time.time()
    for day in range(0, 200, 5):  # one journal a boot, every fifth day for 200 days
        writer = Journal(Root(root))
        for layer, kind in (("weights", Kind.HIT), ("compile", Kind.PUBLISHED)):
            record = Record.new(kind, layer=layer, key=f"{layer}-x-0123456789abcdef", model="org/m", bytes=10)
            writer.append(record._replace(at=now - day * DAY))
        writer.close()
        os.utime(writer.path, (now - day * DAY,) * 2)
    report = sync(manifest, roots, tidy=True)
    assert report.tidied.journals > 30 and report.tidied.events > 30
    folded = root / ".cachekeeper" / "journal" / "folded"
    assert all(path.name.startswith("compacted-") for path in folded.iterdir() if path.stat().st_mtime < now - DAY)
    events, summaries = manifest.count_events("hit"), _summaries(manifest)
    totals = {(r.layer, r.model): (r.hits, r.builds, r.built_bytes) for r in stats(manifest).layers}
    assert totals == {("compile", "org/m"): (0, 40, 400), ("weights", "org/m"): (40, 0, 0)}

    # A healthy manifest: doctor adds nothing, and the summarised days are not folded again.
    _, healthy = doctor(db_url, roots)
    assert healthy.records == 0 and manifest.count_events("hit") == events and _summaries(manifest) == summaries
    assert {(r.layer, r.model): (r.hits, r.builds, r.built_bytes) for r in stats(manifest).layers} == totals

    # A lost manifest: every event comes back from the compacted journals, and summarising them
    # again gives the very same daily counts.
    manifest.engine.dispose()
    (root / ".cachekeeper" / "manifest.db").unlink()
    rebuilt, created = doctor(db_url, roots)
    assert created.manifest == CREATED and rebuilt.count_events("hit") == 40
    sync(rebuilt, roots, tidy=True)
    assert rebuilt.count_events("hit") == events and _summaries(rebuilt) == summaries
    assert {(r.layer, r.model): (r.hits, r.builds, r.built_bytes) for r in stats(rebuilt).layers} == totals
