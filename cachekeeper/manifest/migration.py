"""The manifest's schema: its alembic revisions, which revision a database is at, and upgrades.

The revisions live in ``migrations/`` at the top of the repository; a wheel carries them inside
the package as ``cachekeeper/migrations`` (pyproject.toml's force-include). ``migrations_dir()``
looks in the package first, then beside it: that is the one way they are found.
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ManifestError, SchemaOutOfDate, SchemaTooNew

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from .connection import Database


def migrations_dir() -> Path:
    """Inside an installed wheel the revisions ship in the package; in a checkout they sit beside it."""
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "migrations", package.parent / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise ManifestError(f"cachekeeper's migrations are missing (looked in {package} and {package.parent})")


def revisions() -> dict[str, str | None]:
    """Each schema revision → the one it follows, read from the migration files themselves:
    alembic loads only to run them."""
    found: dict[str, str | None] = {}
    for path in sorted((migrations_dir() / "versions").glob("*.py")):
        text = path.read_text(encoding="utf-8")
        revision = re.search(r"""^revision\s*=\s*["'](\w+)["']""", text, re.MULTILINE)
        follows = re.search(r"""^down_revision\s*=\s*(?:["'](\w+)["']|None)""", text, re.MULTILINE)
        if revision is not None and follows is not None:
            found[revision.group(1)] = follows.group(1)
    return found


def head() -> str:
    """The newest schema revision this code knows."""
    known = revisions()
    heads = set(known) - set(known.values())
    if len(heads) != 1:
        raise ManifestError(f"cachekeeper's migrations in {migrations_dir()} have heads {sorted(heads)}, not one")
    return heads.pop()


def adopt(database: Database) -> None:
    """Bring a database that is not at head to head, or say why not; one process at a time.

    A new database gets the schema. An older SQLite file is backed up and upgraded in place: it
    has one writer. An older server database is left alone, with the command to run, because other
    deployers may still run the older cachekeeper against it.
    """
    newest = head()
    with schema_transaction(database) as connection:
        current = stamped(connection)
        if current == newest:
            return  # another process got there first
        if current is None:
            if has_tables(connection):
                raise ManifestError(
                    f"{database.url} holds tables but no cachekeeper schema revision: it is not a "
                    "cachekeeper manifest; point --db elsewhere or move the file away"
                )
            run_alembic(database, connection, "upgrade", "head")
            return
        if current not in revisions():
            raise too_new(database, current)
        sqlite_file = database.url.sqlite_file
        if sqlite_file is None:
            raise SchemaOutOfDate(
                f"the manifest at {database.url} has schema revision {current}, this cachekeeper "
                f"needs {newest}: run `cachekeeper --db URL db upgrade` with this URL (cachekeepers "
                "older than this one will then refuse it until they are upgraded too)"
            )
        _backup_sqlite(sqlite_file, sqlite_file.with_name(f"{sqlite_file.name}.bak-{current}"))
        run_alembic(database, connection, "upgrade", "head")


def migrate(database: Database, direction: str, revision: str) -> tuple[str | None, str | None]:
    """Run the migrations ``direction`` ("upgrade" or "downgrade") to ``revision``; (before, after)."""
    with schema_transaction(database) as connection:
        before = stamped(connection)
        if before is not None and before not in revisions():
            raise too_new(database, before)
        run_alembic(database, connection, direction, revision)
        return before, stamped(connection)


def too_new(database: Database, current: str) -> SchemaTooNew:
    return SchemaTooNew(
        f"the manifest at {database.url} has schema revision {current}, newer than this "
        f"cachekeeper knows (head {head()}): upgrade cachekeeper"
    )


def run_alembic(database: Database, connection: Connection, direction: str, revision: str) -> None:
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.set_main_option("sqlalchemy.url", database.url.text.replace("%", "%%"))
    config.attributes["connection"] = connection
    getattr(command, direction)(config, revision)


@contextmanager
def schema_transaction(database: Database) -> Iterator[Connection]:
    """One transaction in which the schema is read and changed by this process alone.

    PostgreSQL changes a schema transactionally: a transaction-scoped advisory lock makes
    concurrent first opens and upgrades wait for each other, and the later ones then find the
    work done. SQLite's file has one writer per machine; a lock file beside it does the same.
    """
    from sqlalchemy import func, select

    with database.connection() as connection, database.sqlite_lock(), connection.begin():
        if connection.dialect.name == "postgresql":
            connection.execute(select(func.pg_advisory_xact_lock(lock_id("schema"))))
        yield connection


def stamped(connection: Connection) -> str | None:
    """The schema revision stamped in the database, or None."""
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()


def has_tables(connection: Connection) -> bool:
    from sqlalchemy import inspect

    return bool(set(inspect(connection).get_table_names()) - {"alembic_version"})


def lock_id(name: str) -> int:
    """A 64-bit PostgreSQL advisory lock number, from a name within cachekeeper's own space."""
    return int.from_bytes(hashlib.sha256(f"cachekeeper: {name}".encode()).digest()[:8], "big", signed=True)


def _backup_sqlite(database: Path, backup: Path) -> None:
    """A consistent copy, even while another process writes: SQLite's own online backup."""
    with closing(sqlite3.connect(database)) as source, closing(sqlite3.connect(backup)) as target:
        source.backup(target)
