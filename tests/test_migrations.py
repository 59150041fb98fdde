"""Schema changes: every revision goes up and down on both backends, and no upgrade loses a row.

The tests read the revisions from ``migrations/`` and the tables from the database itself, so a
new revision is covered without touching them. ``next_code`` stands for the next cachekeeper: a
copy of the revisions plus one more, on top of head, that adds a column to every table, on SQLite
by copying each table into a new one as alembic's batch mode does (the step where rows get lost).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import JSON, BigInteger, Boolean, Float, Integer, MetaData, String, insert, select
from sqlalchemy.engine import make_url

import cachekeeper.manifest
from cachekeeper.errors import SchemaOutOfDate, SchemaTooNew
from cachekeeper.manifest import Manifest, migrations_dir

from .helpers import artifact

NEXT_REVISION = "ffff_next"

_REBUILD_EVERY_TABLE = '''"""A revision of the next cachekeeper, for the tests: every table gains a column."""

import sqlalchemy as sa
from alembic import op

revision = "{revision}"
down_revision = "{head}"
branch_labels = None
depends_on = None


def _tables():
    return [name for name in sa.inspect(op.get_bind()).get_table_names() if name != "alembic_version"]


# SQLite: copy every table into a new one, as its batch mode does for most changes. PostgreSQL
# alters in place; a copy there would restart each table's id sequence at 1.
def _recreate():
    return "always" if op.get_bind().dialect.name == "sqlite" else "auto"


def upgrade():
    for name in _tables():
        with op.batch_alter_table(name, recreate=_recreate()) as batch:
            batch.add_column(sa.Column("added_later", sa.String(), nullable=True))


def downgrade():
    for name in _tables():
        with op.batch_alter_table(name, recreate=_recreate()) as batch:
            batch.drop_column("added_later")
'''


def revisions() -> list[str]:
    """The shipped revisions, oldest first; the history must be one line."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    script = ScriptDirectory.from_config(config)
    assert len(script.get_heads()) == 1, f"the revisions branch: heads {script.get_heads()}"
    return [revision.revision for revision in reversed(list(script.walk_revisions()))]


@pytest.fixture
def next_code(tmp_path: Path) -> Callable[[], AbstractContextManager[None]]:
    """``with next_code():`` this process runs the next cachekeeper, whose head is NEXT_REVISION."""
    directory = tmp_path / "next-migrations"
    shutil.copytree(migrations_dir(), directory, ignore=shutil.ignore_patterns("__pycache__"))
    (directory / "versions" / f"{NEXT_REVISION}.py").write_text(
        _REBUILD_EVERY_TABLE.format(revision=NEXT_REVISION, head=revisions()[-1])
    )

    @contextmanager
    def running() -> Iterator[None]:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(cachekeeper.manifest.migration, "migrations_dir", lambda: directory)
            yield

    return running


def test_every_revision_goes_up_and_down_one_step_at_a_time(db_url):
    manifest = Manifest.connect(db_url)
    steps = revisions()
    for revision in steps:
        assert manifest.upgrade(revision)[1] == revision
    for previous in reversed([None, *steps[:-1]]):
        assert manifest.downgrade(previous or "base")[1] == previous
    assert not manifest.has_tables()


@pytest.mark.parametrize("code", ["shipped", "next"])
def test_upgrading_a_database_of_the_first_revision_loses_no_row(db_url, code, next_code):
    with next_code() if code == "next" else nullcontext():
        manifest = Manifest.connect(db_url)
        manifest.upgrade(revisions()[0])
        before = _fill_every_table(manifest)
        manifest.upgrade()
        after = _read_every_table(manifest)
        for table, rows in before.items():
            assert table in after, f"table {table} is gone"
            kept = [{column: row[column] for column in rows[0]} for row in after[table]]
            assert sorted(map(_canonical, kept)) == sorted(map(_canonical, rows)), f"rows of {table} changed"
        reopened = Manifest.open(db_url)
        assert reopened.current() == reopened.head()
        assert reopened.record_artifact(artifact("compile-after-upgrade-0123456789abcdef"))  # ids still free


def _old_manifest_with_a_row(url: str) -> str:
    """A manifest made by the shipped cachekeeper (the next one can make it too), holding a row."""
    shipped_head = revisions()[-1]
    Manifest.connect(url).upgrade(shipped_head)
    Manifest.connect(url).record_artifact(artifact())
    return shipped_head


def test_an_older_sqlite_manifest_is_backed_up_and_upgraded_when_opened(sqlite_url, next_code):
    with next_code():
        shipped_head = _old_manifest_with_a_row(sqlite_url)
        upgraded = Manifest.open(sqlite_url)
        assert upgraded.current() == NEXT_REVISION
        assert [a.key for a in upgraded.artifacts()] == [artifact().key]
    database = Path(make_url(sqlite_url).database)
    backup = Manifest.open(f"sqlite:///{database.with_name(f'{database.name}.bak-{shipped_head}')}")
    assert backup.current() == shipped_head
    assert [a.key for a in backup.artifacts()] == [artifact().key]


def test_an_older_postgresql_manifest_is_left_alone_with_the_command_to_run(postgresql_url, next_code):
    with next_code():
        shipped_head = _old_manifest_with_a_row(postgresql_url)
        with pytest.raises(SchemaOutOfDate) as raised:
            Manifest.open(postgresql_url)
        message = str(raised.value)
        assert f"revision {shipped_head}, this cachekeeper needs {NEXT_REVISION}" in message
        assert "run `cachekeeper --db URL db upgrade`" in message
        assert "\n" not in message and make_url(postgresql_url).password not in message
        manifest = Manifest.connect(postgresql_url)
        assert manifest.current() == shipped_head
        assert manifest.upgrade() == (shipped_head, NEXT_REVISION)
        assert [a.key for a in Manifest.open(postgresql_url).artifacts()] == [artifact().key]


def test_a_database_newer_than_the_code_is_a_clear_error(db_url, next_code):
    with next_code():
        Manifest.open(db_url).record_artifact(artifact())
    for attempt in (Manifest.open, lambda url: Manifest.connect(url).upgrade()):
        with pytest.raises(SchemaTooNew) as raised:
            attempt(db_url)
        message = str(raised.value)
        assert f"schema revision {NEXT_REVISION}, newer than this cachekeeper knows" in message
        assert message.endswith("upgrade cachekeeper") and "\n" not in message
    assert Manifest.connect(db_url).current() == NEXT_REVISION


# --- filling and reading tables generically --------------------------------------------------


def _value(column: Any, n: int) -> Any:
    """A distinct value of the column's type for row ``n``; row 0 leaves nullable columns empty."""
    if n == 0 and column.nullable:
        return None
    kind = column.type
    if isinstance(kind, Boolean):
        return n % 2 == 1
    if isinstance(kind, BigInteger):
        return n * 2**40 + 7  # past 32 bits: a column narrowed on the way would lose it
    if isinstance(kind, Integer):
        return n * 1000 + 7
    if isinstance(kind, Float):
        return n + 0.25
    if isinstance(kind, JSON):
        return {"n": {"value": n, "source": "observed"}, "list": {"value": [n, [n]], "source": "declared"}}
    if isinstance(kind, String):
        return f"{column.table.name}-{column.name}-{n}"
    raise AssertionError(f"no test value for {column.table.name}.{column.name} of type {kind!r}: teach _value")


def _fill_every_table(manifest: Manifest) -> dict[str, list[dict[str, Any]]]:
    """Three rows in every table; the rows as stored, the ids the database gave them included."""
    metadata = MetaData()
    with manifest.engine.begin() as connection:
        metadata.reflect(connection)
        for table in metadata.sorted_tables:
            if table.name == "alembic_version":
                continue
            given = [c for c in table.columns if not (c.primary_key and isinstance(c.type, Integer))]
            for n in range(3):
                connection.execute(insert(table).values({c.name: _value(c, n) for c in given}))
    return _read_every_table(manifest)


def _read_every_table(manifest: Manifest) -> dict[str, list[dict[str, Any]]]:
    metadata = MetaData()
    with manifest.engine.connect() as connection:
        metadata.reflect(connection)
        return {
            table.name: [dict(row._mapping) for row in connection.execute(select(table))]
            for table in metadata.sorted_tables
            if table.name != "alembic_version"
        }


def _canonical(row: dict[str, Any]) -> str:
    return json.dumps(row, sort_keys=True, default=str)
