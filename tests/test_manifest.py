"""The manifest: schema only through migrations, clear errors for foreign or newer databases."""

from __future__ import annotations

import sqlite3
import time
import uuid

import pytest
from sqlalchemy import text
from sqlmodel import SQLModel

import cachekeeper.manifest.tables  # noqa: F401  (the tables, on SQLModel.metadata)
from cachekeeper.errors import ManifestError, ManifestUnreachable, SchemaTooNew
from cachekeeper.facts import Facts, Source
from cachekeeper.manifest import Manifest, migration
from cachekeeper.records import Record

from .helpers import artifact, facts


def test_a_new_database_is_created_at_the_head_revision(manifest):
    assert manifest.current() == manifest.head()
    assert manifest.artifacts() == []


def test_the_migrated_schema_matches_the_models(manifest):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    with manifest.engine.connect() as connection:
        differences = compare_metadata(
            MigrationContext.configure(connection, opts={"compare_type": True}), SQLModel.metadata
        )
    assert differences == []


def test_downgrade_to_nothing_and_upgrade_again(manifest):
    manifest.downgrade("base")
    assert manifest.current() is None
    assert not manifest.has_tables()
    manifest.upgrade()
    assert manifest.current() == manifest.head()
    assert Manifest.open(manifest.url).current() == manifest.head()


def test_a_database_of_someone_elses_tables_is_refused(tmp_path):
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as connection:
        connection.execute("create table users (id integer)")
    with pytest.raises(ManifestError, match="not a cachekeeper manifest"):
        Manifest.open(f"sqlite:///{path}")


def test_a_database_newer_than_the_code_says_to_upgrade_cachekeeper(manifest):
    with manifest.engine.begin() as connection:
        connection.execute(text("update alembic_version set version_num = 'f00dfeed'"))
    with pytest.raises(SchemaTooNew, match="upgrade cachekeeper"):
        Manifest.open(manifest.url)


@pytest.mark.parametrize(
    "url", ["nonsense", "sqlite:////proc/no/such/dir/manifest.db", "postgresql+psycopg://nobody@127.0.0.1:1/none"]
)
def test_unusable_urls_are_one_clear_error(url):
    with pytest.raises(ManifestUnreachable) as raised:
        Manifest.open(url)
    assert "\n" not in str(raised.value) and "password" not in str(raised.value)


def _record(kind: str, **fields):
    return Record.from_json({"uid": uuid.uuid4().hex, "kind": kind, "at": time.time(), "host": "h:1", **fields})


def test_folding_the_same_records_twice_changes_nothing(manifest):
    observed = _record("observed", facts=facts().to_json())
    published = artifact()
    hit = _record("hit", layer="compile", key=published.key, seconds=1.0)
    manifest.fold([observed, hit], [published], {"j1": (100, False)})
    manifest.fold([observed, hit], [published], {"j1": (100, False)})
    assert manifest.count_events("observed") == 1 and manifest.count_events("hit") == 1
    assert manifest.latest_observation("H100").seen == 1
    assert [a.key for a in manifest.artifacts()] == [published.key]
    assert manifest.artifact(published.key).last_used_at == hit.at
    assert manifest.journal_cursors() == {"j1": (100, False)}


def test_observations_keep_the_environment_only_and_the_newest_wins(manifest):
    old = _record("observed", facts=facts(driver__version="570.1").to_json(), at=time.time() - 100)
    new = _record("observed", facts=facts().to_json())
    manifest.fold([new, old], [], {})
    latest = manifest.latest_observation("H100")
    assert latest.facts.value("driver.version") == "580.159.04"
    assert "model" not in latest.facts and "engine.max_model_len" not in latest.facts
    assert manifest.latest_observation("A10") is None


def test_last_used_only_moves_forward(manifest):
    record = artifact()
    manifest.record_artifact(record)
    manifest.fold([_record("hit", key=record.key, at=record.last_used_at - 50)], [], {})
    assert manifest.artifact(record.key).last_used_at == record.last_used_at


def test_facts_round_trip_through_json_columns(manifest):
    record = artifact(facts={"engine.sizes": (1, (2, 3)), "flag": True, "n": None})
    manifest.record_artifact(record)
    assert manifest.artifact(record.key).facts == record.facts
    assert Facts.from_json(facts().to_json()) == facts()
    assert facts().to_json()["gpu.count"] == {"value": 1, "source": str(Source.OBSERVED)}


def test_a_plain_postgresql_url_means_psycopg(postgresql_url):
    manifest = Manifest.open(postgresql_url.replace("postgresql+psycopg://", "postgresql://"))
    assert manifest.engine.dialect.driver == "psycopg" and manifest.current() == manifest.head()


def test_the_head_read_from_the_migration_files_is_alembics():
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from cachekeeper.manifest import migrations_dir

    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    script = ScriptDirectory.from_config(config)
    manifest = Manifest.connect("sqlite:///:memory:")
    assert manifest.head() == script.get_current_head()
    assert set(migration.revisions()) == {revision.revision for revision in script.walk_revisions()}


def test_reading_the_default_manifest_loads_no_sqlalchemy(tmp_path):
    import subprocess
    import sys

    url = f"sqlite:///{tmp_path / 'manifest.db'}"
    Manifest.open(url)  # created and migrated here, with SQLAlchemy and alembic
    script = (
        "import sys; from cachekeeper.manifest import Manifest; m = Manifest.open(sys.argv[1]); "
        "m.artifacts(); m.summaries(); m.latest_observation('cpu'); m.journal_cursors(['x']); m.pinned(); "
        "assert not [n for n in sys.modules if n.split('.')[0] in ('sqlalchemy', 'sqlmodel', 'alembic')]"
    )
    subprocess.run([sys.executable, "-c", script, url], check=True)


def test_pages_of_summaries_list_every_artifact_once_in_order(manifest):
    now = time.time()
    # Ties in last use (the keyset resumes by key within one time), and every state.
    for n in range(57):
        manifest.record_artifact(artifact(f"compile-p-{n:016x}", last_used_at=now - n // 4, model=f"org/m{n % 2}"))
    manifest.set_state("compile-p-0000000000000005", "deleting")
    everything = manifest.summaries()
    pages = list(manifest.summary_pages(first=3, size=7))
    assert [len(page) for page in pages] == [3, *[7] * 7, 5]
    assert [row for page in pages for row in page] == everything
    assert [row for page in manifest.summary_pages(limit=10, first=3, size=4) for row in page] == everything[:10]
    assert [row for page in manifest.summary_pages(model="org/m1", first=2, size=5) for row in page] == [
        row for row in everything if row.model == "org/m1"
    ]
    assert manifest.summaries(limit=4) == everything[:4]
    assert list(manifest.summary_pages(layer="weights")) == []
