"""``Manifest``: the manifest database as callers use it: opened at the schema this code knows,
read (queries.py) and written (writes.py) through frozen values, never rows."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from ..errors import ManifestUnreachable
from ..records import Record
from ..store import PUBLISHED, Artifact
from . import migration, queries
from .connection import Database, first_line
from .url import DatabaseUrl

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from .writes import FoldResult


class Manifest(Database):
    """A connection to one manifest database. Open it with ``Manifest.open(url)``."""

    # --- opening and schema --------------------------------------------------------------------

    @classmethod
    def connect(cls, url: str | DatabaseUrl) -> Manifest:
        """A Manifest without any schema check: for ``db`` commands and migrations."""
        url = url if isinstance(url, DatabaseUrl) else DatabaseUrl.parse(url)
        if url.is_server:
            return cls(url, _server_engine(url))
        if url.sqlite_file is not None:
            try:
                url.sqlite_file.parent.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise ManifestUnreachable(
                    f"cannot create the manifest's directory for {url.sqlite_file}: {error.strerror}"
                ) from None
        return cls(url)

    @classmethod
    def open(cls, url: str | DatabaseUrl) -> Manifest:
        """Connect and make sure the schema is the one this code knows (see ``migration.adopt``)."""
        manifest = cls.connect(url)
        if manifest.current() != migration.head():
            migration.adopt(manifest)
        return manifest

    def head(self) -> str:
        """The newest schema revision this code knows."""
        return migration.head()

    def current(self) -> str | None:
        """The schema revision stamped in the database, or None when there is none."""
        if self.is_server:
            with self.connection() as connection:
                return migration.stamped(connection)
        if not self.rows("SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'alembic_version'"):
            return None
        stamped = self.rows("SELECT version_num FROM alembic_version")
        return stamped[0][0] if stamped else None

    def upgrade(self, revision: str = "head") -> tuple[str | None, str | None]:
        """Run the migrations up to ``revision``; (before, after)."""
        return migration.migrate(self, "upgrade", revision)

    def downgrade(self, revision: str) -> tuple[str | None, str | None]:
        return migration.migrate(self, "downgrade", revision)

    def has_tables(self) -> bool:
        with self.connection() as connection:
            return migration.has_tables(connection)

    # --- reads (queries.py) --------------------------------------------------------------------

    def artifact(self, key: str) -> Artifact | None:
        return queries.artifact(self.rows, key)

    def artifacts(
        self, *, layer: str | None = None, model: str | None = None, state: str | None = PUBLISHED
    ) -> list[Artifact]:
        return queries.artifacts(self.rows, layer=layer, model=model, state=state)

    def candidates(self) -> list[Artifact]:
        return queries.candidates(self.rows)

    def nearest(self, *, layer: str, model: str, other_than: str) -> Artifact | None:
        return queries.nearest(self.rows, layer=layer, model=model, other_than=other_than)

    def summaries(
        self, *, layer: str | None = None, model: str | None = None, limit: int | None = None
    ) -> list[queries.ArtifactSummary]:
        return queries.summaries(self.rows, layer=layer, model=model, limit=limit)

    def summary_pages(
        self,
        *,
        layer: str | None = None,
        model: str | None = None,
        limit: int | None = None,
        first: int = 100,
        size: int = 2000,
    ) -> Iterator[list[queries.ArtifactSummary]]:
        return queries.summary_pages(self.rows, layer=layer, model=model, limit=limit, first=first, size=size)

    def stored(self, *, layer: str | None = None, model: str | None = None) -> dict[tuple[str, str], queries.Stored]:
        return queries.stored(self.rows, layer=layer, model=model)

    def keys_in_state(self, state: str) -> list[tuple[str, str]]:
        return queries.keys_in_state(self.rows, state)

    def dependents(self) -> dict[str, list[str]]:
        return queries.dependents(self.rows)

    def pinned(self) -> set[str]:
        return queries.pinned(self.rows)

    def journal_cursors(self, names: Sequence[str] | None = None) -> dict[str, tuple[int, bool]]:
        return queries.journal_cursors(self.rows, names)

    def latest_observation(self, gpu_type: str) -> queries.Observation | None:
        return queries.latest_observation(self.rows, gpu_type)

    def events(self, *, since: float | None = None, kinds: Sequence[str] | None = None) -> list[queries.Event]:
        return queries.events(self.rows, since=since, kinds=kinds)

    def count_events(self, kind: str) -> int:
        return queries.count_events(self.rows, kind)

    def lease_keys(self) -> list[tuple[str, str]]:
        return queries.lease_keys(self.rows)

    def event_counts(self, *, since: float | None = None, kinds: Sequence[str]) -> list[queries.EventCount]:
        return queries.event_counts(self.rows, since=since, kinds=kinds)

    def summarised_before(self) -> float | None:
        return queries.summarised_before(self.rows)

    def lease(self, layer: str, key: str) -> dict[str, Any] | None:
        return queries.lease(self.rows, layer, key)

    def leases(self) -> list[dict[str, Any]]:
        return queries.leases(self.rows)

    def sightings(self, observer: str, things: Sequence[str] | None = None) -> dict[str, queries.Sighting]:
        """What ``observer`` remembers of ``things`` (default: everything): see liveness.Sightings."""
        return queries.sightings(self.rows, observer, things)

    # --- writes (writes.py, which loads SQLAlchemy) ----------------------------------------------

    def fold(
        self,
        records: Sequence[Record],
        artifacts: Sequence[Artifact],
        cursors: Mapping[str, tuple[int, bool]],
        *,
        now: float | None = None,
    ) -> FoldResult:
        """``now``: the folder's clock, which orders observations and caps times of use."""
        from . import writes

        return writes.fold(self, records, artifacts, cursors, now=now)

    def drop_journal_cursors(self, names: Sequence[str]) -> int:
        from . import writes

        return writes.drop_journal_cursors(self, names)

    def summarise_events(self, *, before: float) -> int:
        from . import writes

        return writes.summarise_events(self, before=before)

    def record_artifact(self, artifact: Artifact) -> bool:
        from . import writes

        return writes.record_artifact(self, artifact)

    def set_state(self, key: str, state: str) -> None:
        from . import writes

        writes.set_state(self, key, state)

    def set_counts(self, key: str, size: int, files: int) -> None:
        """Record what an artifact holds now: its size in bytes and its number of files."""
        from . import writes

        writes.set_counts(self, key, size, files)

    def forget(self, key: str, *, created_at: float | None = None) -> None:
        from . import writes

        writes.forget(self, key, created_at=created_at)

    def claim_removals(self, keys: Sequence[str]) -> AbstractContextManager[set[str]]:
        from . import writes

        return writes.claim_removals(self, keys)

    def forget_removed(self, keys: Sequence[str], events: Sequence[Record]) -> None:
        from . import writes

        writes.forget_removed(self, keys, events)

    def insert_lease(self, layer: str, key: str, fields: Mapping[str, Any]) -> bool:
        from . import writes

        return writes.insert_lease(self, layer, key, fields)

    def replace_lease(self, layer: str, key: str, token: str, fields: Mapping[str, Any]) -> bool:
        from . import writes

        return writes.replace_lease(self, layer, key, token, fields)

    def drop_lease(self, layer: str, key: str, token: str) -> None:
        from . import writes

        writes.drop_lease(self, layer, key, token)

    def record_sightings(
        self, observer: str, seen: Mapping[str, str], now: float, *, forget: Sequence[str] = ()
    ) -> dict[str, float]:
        """``observer`` sees ``seen`` (thing → digest) at ``now``, by its own clock; when it first saw
        each thing as it is now. ``forget``: things that are gone."""
        from . import writes

        return writes.record_sightings(self, observer, seen, now, forget=forget)


def _server_engine(url: DatabaseUrl) -> Engine:
    """The engine of a database server's URL, or one clear error."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError
    from sqlmodel import create_engine

    driver = make_url(url.text).get_driver_name()
    try:
        # A server that never answers (a firewall dropping packets) fails in seconds, not minutes.
        timeout = {"connect_timeout": 10} if driver in ("psycopg", "psycopg2") else {}
        return create_engine(url.text, pool_pre_ping=True, connect_args=timeout)
    except ImportError:
        raise ManifestUnreachable(
            f"cannot use database URL {url}: its driver {driver} is not installed "
            "(cachekeeper's postgres extra installs psycopg: pip install 'cachekeeper[postgres]')"
        ) from None
    except (ArgumentError, SQLAlchemyError) as error:
        raise ManifestUnreachable(f"cannot use database URL {url}: {first_line(error)}") from None
