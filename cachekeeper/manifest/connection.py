"""``Database``: one manifest database's connections, and the drivers' errors in cachekeeper's words.

Reads go through the database's own driver (``rows``: stdlib ``sqlite3`` for the default), so that
a command that only reads never loads SQLAlchemy; writes and migrations use its engine.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from typing import TYPE_CHECKING, Any

from ..errors import ManifestError, ManifestUnreachable
from .url import DatabaseUrl

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine
    from sqlmodel import Session


class Database:
    """A connection to one manifest database, before anything about its schema is known."""

    def __init__(self, url: DatabaseUrl, engine: Engine | None = None) -> None:
        self.url = url
        self._engine = engine

    @property
    def is_server(self) -> bool:
        """A database server that many containers may write at once (not a SQLite file)."""
        return self.url.is_server

    @property
    def engine(self) -> Engine:
        """SQLAlchemy's engine, created on first use: for writes and migrations."""
        if self._engine is None:
            from sqlmodel import create_engine

            # SQLite on a network volume has no reliable shared memory for WAL: keep its rollback
            # journal, and wait for the lock instead of failing at once.
            self._engine = create_engine(self.url.text, connect_args={"timeout": 60})
        return self._engine

    # --- connections ---------------------------------------------------------------------------

    @contextmanager
    def sqlite_lock(self) -> Iterator[None]:
        """Exclusive use of ``<manifest.db>.lock`` for as long as the block runs; waits for it."""
        if self.url.sqlite_file is None:
            yield
            return
        import fcntl

        with open(f"{self.url.sqlite_file}.lock", "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX)
            except OSError:
                pass  # a file system without locks: SQLite there has a single writer anyway
            yield  # closing the file releases the lock, also when the process dies

    @contextmanager
    def connection(self) -> Iterator[Connection]:
        from sqlalchemy.exc import DatabaseError, OperationalError

        try:
            with self.engine.connect() as connection:
                yield connection
        except OperationalError as error:
            raise ManifestUnreachable(f"cannot open the manifest at {self.url}: {first_line(error)}") from None
        except DatabaseError as error:
            raise self._damaged(error, type(error) is DatabaseError) from None

    @contextmanager
    def session(self) -> Iterator[Session]:
        from sqlalchemy.exc import DatabaseError, OperationalError
        from sqlmodel import Session

        try:
            with Session(self.engine) as session:
                yield session
                session.commit()
        except OperationalError as error:
            raise ManifestError(f"the manifest at {self.url} failed: {first_line(error)}") from None
        except DatabaseError as error:
            raise self._damaged(error, type(error) is DatabaseError) from None

    def _damaged(self, error: Exception, damaged: bool) -> Exception:
        """SQLite's own words for a file that is no database, or a damaged one; any other database
        error (a constraint, a type) is a bug and keeps its traceback."""
        if not damaged:
            return error
        return ManifestError(
            f"the manifest at {self.url} is damaged ({first_line(error)}): "
            "`cachekeeper doctor` moves it aside and rebuilds it from the sidecars and journals"
        )

    def rows(self, sql: str, params: Mapping[str, Any] | None = None) -> list[Sequence[Any]]:
        """Run a read-only query written with ``:name`` parameters; its rows."""
        params = dict(params or {})
        if self.url.sqlite_database is not None:
            try:
                with closing(sqlite3.connect(self.url.sqlite_database, timeout=60)) as connection:
                    return connection.execute(sql, params).fetchall()
            except sqlite3.DatabaseError as error:
                if type(error) is sqlite3.DatabaseError:
                    raise self._damaged(error, True) from None
                if "unable to open" in str(error):
                    raise ManifestUnreachable(f"cannot open the manifest at {self.url}: {error}") from None
                raise ManifestError(f"the manifest at {self.url} failed: {first_line(error)}") from None
        from sqlalchemy.exc import SQLAlchemyError

        with self.connection() as connection:
            try:  # psycopg's parameters are %(name)s
                return list(connection.exec_driver_sql(re.sub(r":(\w+)", r"%(\1)s", sql), params))
            except SQLAlchemyError as error:
                raise ManifestError(f"the manifest at {self.url} failed: {first_line(error)}") from None


def first_line(error: Exception) -> str:
    text = str(getattr(error, "orig", None) or error)
    return text.strip().splitlines()[0] if text.strip() else type(error).__name__
