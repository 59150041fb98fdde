"""The manifest: the SQL index of artifacts, observed fingerprints, pins, leases and events.

SQLite at ``<root>/.cachekeeper/manifest.db`` by default, PostgreSQL for fleets; the schema is
created and changed only by the alembic revisions in ``migrations/``. Reads are plain SQL over the
database's own driver (stdlib ``sqlite3`` for the default), so that ``cachekeeper check`` and
``ls`` start in a fraction of a second; SQLAlchemy, sqlmodel and alembic load only to write or to
migrate, through the tables and statements in schema.py. Callers get the frozen values of store.py
and facts.py, never rows.

The manifest is an index, not the truth: sidecars say what exists, and ``doctor`` can rebuild
the manifest from them and from the journals.
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from . import facts as f
from .errors import ManifestError, ManifestUnreachable, SchemaOutOfDate, SchemaTooNew
from .facts import Facts
from .keys import canonical_json
from .journal import PINNED, UNPINNED
from .store import DELETING, PUBLISHED, Artifact, Roots

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine
    from sqlmodel import Session


# Facts that describe the machine and its software, as opposed to what it was asked to run.
_DEPLOY_PREFIXES = (f.MODEL, f.ENGINE_PREFIX)

_ARTIFACT_COLUMNS = "key, layer, model, relpath, bytes, files, created_at, last_used_at, builder, facts, depends_on, checksum"


class ArtifactSummary(NamedTuple):
    """An artifact as ``ls`` shows it: everything but its facts, which are slow to read in bulk.
    A named tuple, since ``ls`` makes one per row of the whole manifest."""

    key: str
    layer: str
    model: str
    state: str
    relpath: str
    bytes: int
    files: int
    created_at: float
    last_used_at: float


@dataclass(frozen=True, slots=True)
class Event:
    """Something the runtime or a command recorded: a hit, miss, publish or prune."""

    at: float
    kind: str
    layer: str | None
    key: str | None
    model: str | None
    seconds: float | None
    bytes: int | None
    host: str | None


@dataclass(frozen=True, slots=True)
class Observation:
    """An environment fingerprint seen at run time: machine and software, no model or engine."""

    facts: Facts
    gpu_type: str
    host: str
    first_seen_at: float
    last_seen_at: float
    seen: int


@dataclass(frozen=True, slots=True)
class FoldResult:
    records: int  # journal records applied for the first time
    artifacts: int  # artifacts newly indexed


def environment_facts(facts: Facts) -> Facts:
    return Facts(tuple(fact for fact in facts if not fact.name.startswith(_DEPLOY_PREFIXES)))


def default_url(roots: Roots) -> str:
    return f"sqlite:///{roots.main.manifest_path}"


def migrations_dir() -> Path:
    """Inside an installed wheel the revisions ship in the package; in a checkout they sit beside it."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "migrations", here.parent / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise ManifestError(f"cachekeeper's migrations are missing (looked in {here} and {here.parent})")


class Manifest:
    """A connection to one manifest database. Open it with ``Manifest.open(url)``."""

    def __init__(self, url: str, sqlite_database: str | None, engine: Engine | None = None) -> None:
        self.url = url
        self._sqlite_database = sqlite_database
        self._engine = engine

    @property
    def is_server(self) -> bool:
        """A database server that many containers may write at once (not a SQLite file)."""
        return self._sqlite_database is None

    @property
    def engine(self) -> Engine:
        """SQLAlchemy's engine, created on first use: for writes and migrations."""
        if self._engine is None:
            from sqlmodel import create_engine

            # SQLite on a network volume has no reliable shared memory for WAL: keep its rollback
            # journal, and wait for the lock instead of failing at once.
            self._engine = create_engine(self.url, connect_args={"timeout": 60})
        return self._engine

    # --- opening and schema --------------------------------------------------------------------

    @classmethod
    def connect(cls, url: str) -> Manifest:
        """A Manifest without any schema check: for ``db`` commands and migrations."""
        database = _sqlite_database(url)
        if database is None:
            return cls(*_server(url))
        if "\0" in database:
            raise ManifestUnreachable(f"invalid database URL {_safe(url)!r}: a path cannot hold a NUL")
        if database not in ("", ":memory:"):
            try:
                Path(database).parent.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise ManifestUnreachable(
                    f"cannot create the manifest's directory for {database}: {error.strerror}"
                ) from None
        return cls(url, database)

    @classmethod
    def open(cls, url: str) -> Manifest:
        """Connect and make sure the schema is the one this code knows.

        A new database gets the schema. An older SQLite file is backed up and upgraded in place:
        it has one writer. An older server database is left alone, with the command to run,
        because other deployers may still run the older cachekeeper against it.
        """
        manifest = cls.connect(url)
        if manifest.current() != manifest.head():
            manifest._adopt()
        return manifest

    def _adopt(self) -> None:
        """Bring a database that is not at head to head, or say why not; one process at a time."""
        head = self.head()
        with self._schema_transaction() as connection:
            current = _revision(connection)
            if current == head:
                return  # another process got there first
            if current is None:
                if _has_tables(connection):
                    raise ManifestError(
                        f"{_safe(self.url)} holds tables but no cachekeeper schema revision: it is not a "
                        "cachekeeper manifest; point --db elsewhere or move the file away"
                    )
                self._run_alembic(connection, "upgrade", "head")
                return
            if current not in self._known_revisions():
                raise self._too_new(current)
            if self.is_server or self._sqlite_database in ("", ":memory:"):
                raise SchemaOutOfDate(
                    f"the manifest at {_safe(self.url)} has schema revision {current}, this cachekeeper "
                    f"needs {head}: run `cachekeeper --db URL db upgrade` with this URL (cachekeepers "
                    "older than this one will then refuse it until they are upgraded too)"
                )
            database = Path(str(self._sqlite_database))
            _backup_sqlite(database, database.with_name(f"{database.name}.bak-{current}"))
            self._run_alembic(connection, "upgrade", "head")

    def _too_new(self, current: str) -> SchemaTooNew:
        return SchemaTooNew(
            f"the manifest at {_safe(self.url)} has schema revision {current}, newer than this "
            f"cachekeeper knows (head {self.head()}): upgrade cachekeeper"
        )

    def head(self) -> str:
        """The newest schema revision this code knows."""
        revisions = _revisions()
        heads = set(revisions) - set(revisions.values())
        if len(heads) != 1:
            raise ManifestError(f"cachekeeper's migrations in {migrations_dir()} have heads {sorted(heads)}, not one")
        return heads.pop()

    def _known_revisions(self) -> set[str]:
        return set(_revisions())

    def current(self) -> str | None:
        """The schema revision stamped in the database, or None when there is none."""
        if self.is_server:
            with self._connection() as connection:
                return _revision(connection)
        if not self._rows("SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'alembic_version'"):
            return None
        stamped = self._rows("SELECT version_num FROM alembic_version")
        return stamped[0][0] if stamped else None

    def _has_tables(self) -> bool:
        with self._connection() as connection:
            return _has_tables(connection)

    def upgrade(self, revision: str = "head") -> tuple[str | None, str | None]:
        """Run the migrations up to ``revision``; (before, after)."""
        return self._migrate("upgrade", revision)

    def downgrade(self, revision: str) -> tuple[str | None, str | None]:
        return self._migrate("downgrade", revision)

    def _migrate(self, direction: str, revision: str) -> tuple[str | None, str | None]:
        with self._schema_transaction() as connection:
            before = _revision(connection)
            if before is not None and before not in self._known_revisions():
                raise self._too_new(before)
            self._run_alembic(connection, direction, revision)
            return before, _revision(connection)

    def _run_alembic(self, connection: Connection, direction: str, revision: str) -> None:
        from alembic import command
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(migrations_dir()))
        config.set_main_option("sqlalchemy.url", self.url.replace("%", "%%"))
        config.attributes["connection"] = connection
        getattr(command, direction)(config, revision)

    @contextmanager
    def _schema_transaction(self) -> Iterator[Connection]:
        """One transaction in which the schema is read and changed by this process alone.

        PostgreSQL changes a schema transactionally: a transaction-scoped advisory lock makes
        concurrent first opens and upgrades wait for each other, and the later ones then find the
        work done. SQLite's file has one writer per machine; a lock file beside it does the same.
        """
        from sqlalchemy import func, select

        with self._connection() as connection, self._sqlite_lock(), connection.begin():
            if connection.dialect.name == "postgresql":
                connection.execute(select(func.pg_advisory_xact_lock(_lock_id("schema"))))
            yield connection

    @contextmanager
    def _sqlite_lock(self) -> Iterator[None]:
        """Exclusive use of ``<manifest.db>.lock`` for as long as the block runs; waits for it."""
        if self._sqlite_database in (None, "", ":memory:"):
            yield
            return
        import fcntl

        with open(f"{self._sqlite_database}.lock", "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX)
            except OSError:
                pass  # a file system without locks: SQLite there has a single writer anyway
            yield  # closing the file releases the lock, also when the process dies

    @contextmanager
    def _connection(self) -> Iterator[Any]:
        from sqlalchemy.exc import DatabaseError, OperationalError

        try:
            with self.engine.connect() as connection:
                yield connection
        except OperationalError as error:
            raise ManifestUnreachable(f"cannot open the manifest at {_safe(self.url)}: {_first_line(error)}") from None
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
            raise ManifestError(f"the manifest at {_safe(self.url)} failed: {_first_line(error)}") from None
        except DatabaseError as error:
            raise self._damaged(error, type(error) is DatabaseError) from None

    def _damaged(self, error: Exception, damaged: bool) -> Exception:
        """SQLite's own words for a file that is no database, or a damaged one; any other database
        error (a constraint, a type) is a bug and keeps its traceback."""
        if not damaged:
            return error
        return ManifestError(
            f"the manifest at {_safe(self.url)} is damaged ({_first_line(error)}): "
            "`cachekeeper doctor` moves it aside and rebuilds it from the sidecars and journals"
        )

    def _rows(self, sql: str, params: Mapping[str, Any] | None = None) -> list[Sequence[Any]]:
        """Run a read-only query written with ``:name`` parameters; its rows."""
        params = dict(params or {})
        if self._sqlite_database is not None:
            try:
                with closing(sqlite3.connect(self._sqlite_database, timeout=60)) as connection:
                    return connection.execute(sql, params).fetchall()
            except sqlite3.DatabaseError as error:
                if type(error) is sqlite3.DatabaseError:
                    raise self._damaged(error, True) from None
                if "unable to open" in str(error):
                    raise ManifestUnreachable(f"cannot open the manifest at {_safe(self.url)}: {error}") from None
                raise ManifestError(f"the manifest at {_safe(self.url)} failed: {_first_line(error)}") from None
        from sqlalchemy.exc import SQLAlchemyError

        with self._connection() as connection:
            try:  # psycopg's parameters are %(name)s
                return list(connection.exec_driver_sql(re.sub(r":(\w+)", r"%(\1)s", sql), params))
            except SQLAlchemyError as error:
                raise ManifestError(f"the manifest at {_safe(self.url)} failed: {_first_line(error)}") from None

    # --- folding what writers recorded --------------------------------------------------------

    def fold(
        self,
        records: Sequence[Mapping[str, Any]],
        artifacts: Sequence[Artifact],
        cursors: Mapping[str, tuple[int, bool]],
    ) -> FoldResult:
        """Apply journal records, newly published artifacts and journal cursors in one transaction.

        Idempotent, also when several processes fold the same journals at once: a record is
        applied by whoever stores its uid first (the unique constraint decides), an artifact
        already indexed is left as it is, ``last_used_at`` and journal cursors only move forward.
        """
        from . import schema

        with self.session() as session:
            fresh = {r["uid"]: r for r in records if r.get("kind") != "closed"}
            applied = schema.insert_new_events(session, [fresh[uid] for uid in sorted(fresh)])
            observed = [fresh[uid] for uid in applied if fresh[uid].get("kind") == "observed"]
            observations = [_observation_values(r) for r in observed if isinstance(r.get("facts"), dict)]
            for values in sorted(observations, key=lambda values: (values["digest"], values["last_seen_at"])):
                schema.upsert_observation(session, values)
            for uid in applied:
                if fresh[uid].get("kind") in (PINNED, UNPINNED) and fresh[uid].get("key"):
                    schema.set_pin(session, fresh[uid])
            by_key = sorted(artifacts, key=lambda artifact: artifact.key)
            indexed = sum(schema.insert_artifact(session, artifact) for artifact in by_key)
            last_hit: dict[str, float] = {}
            for record in records:
                if record.get("kind") == "hit" and record.get("key"):
                    key, at = str(record["key"]), float(record["at"])
                    last_hit[key] = max(at, last_hit.get(key, at))
            for key in sorted(last_hit):
                schema.touch(session, key, last_hit[key])
            for name in sorted(cursors):
                schema.advance_cursor(session, name, *cursors[name])
        return FoldResult(records=len(applied), artifacts=indexed)

    def journal_cursors(self, names: Sequence[str] | None = None) -> dict[str, tuple[int, bool]]:
        """(offset, closed) of the journals named, or of every journal ever folded."""
        query = 'SELECT name, "offset", closed FROM journal_cursor'
        if names is None:
            rows = self._rows(query)
        else:
            rows = [row for chunk in _chunks(list(names)) for row in self._rows(*_where_in(query, "name", chunk))]
        return {name: (int(offset), bool(closed)) for name, offset, closed in rows}

    # --- artifacts ------------------------------------------------------------------------------

    def record_artifact(self, artifact: Artifact) -> bool:
        """Index a published artifact. False when it was already indexed (nothing changes)."""
        from . import schema

        with self.session() as session:
            return schema.insert_artifact(session, artifact)

    def artifact(self, key: str) -> Artifact | None:
        rows = self._rows(f"SELECT {_ARTIFACT_COLUMNS} FROM artifact WHERE key = :key", {"key": key})
        return _artifact(rows[0]) if rows else None

    def artifacts(
        self, *, layer: str | None = None, model: str | None = None, state: str | None = PUBLISHED
    ) -> list[Artifact]:
        """Artifacts, most recently used first."""
        where, params = _filters(layer=layer, model=model, state=state)
        query = f"SELECT {_ARTIFACT_COLUMNS} FROM artifact{where} ORDER BY last_used_at DESC, key"
        return [_artifact(row) for row in self._rows(query, params)]

    def nearest(self, *, layer: str, model: str, other_than: str) -> Artifact | None:
        """The most recently used published artifact of ``layer`` and ``model`` under another key."""
        where, params = _filters(layer=layer, model=model, state=PUBLISHED)
        query = (
            f"SELECT {_ARTIFACT_COLUMNS} FROM artifact{where} AND key <> :other_than "
            "ORDER BY last_used_at DESC, key LIMIT 1"
        )
        rows = self._rows(query, {**params, "other_than": other_than})
        return _artifact(rows[0]) if rows else None

    def summaries(self, *, layer: str | None = None, model: str | None = None) -> list[ArtifactSummary]:
        """Every artifact, in any state, most recently used first, without its facts."""
        where, params = _filters(layer=layer, model=model)
        query = (
            "SELECT key, layer, model, state, relpath, bytes, files, created_at, last_used_at "
            f"FROM artifact{where} ORDER BY last_used_at DESC, key"
        )
        return list(map(ArtifactSummary._make, self._rows(query, params)))

    def keys_in_state(self, state: str) -> list[tuple[str, str]]:
        """(layer, key) of every artifact in ``state``."""
        return [(layer, key) for layer, key in self._rows("SELECT layer, key FROM artifact WHERE state = :state", {"state": state})]

    def set_state(self, key: str, state: str) -> None:
        from .schema import ArtifactRow
        from sqlalchemy import update

        with self.session() as session:
            session.exec(update(ArtifactRow).where(ArtifactRow.key == key).values(state=state))  # type: ignore[call-overload]

    def forget_published(self, key: str, created_at: float) -> None:
        """Forget the row of an artifact whose sidecar is gone, unless a prune is removing it
        (``deleting``) or it was published anew since (another ``created_at``)."""
        from sqlalchemy import delete

        from .schema import ArtifactRow

        table = ArtifactRow.__table__
        ours = (table.c.key == key, table.c.state == PUBLISHED, table.c.created_at == created_at)
        with self.session() as session:
            session.exec(delete(table).where(*ours))  # type: ignore[call-overload]

    def forget(self, key: str) -> None:
        from sqlalchemy import delete

        from .schema import ArtifactRow

        table = ArtifactRow.__table__
        with self.session() as session:  # one statement: a row another process forgot is no error
            session.exec(delete(table).where(table.c.key == key))  # type: ignore[call-overload]

    @contextmanager
    def claim_removals(self, keys: Sequence[str]) -> Iterator[set[str]]:
        """Mark ``keys`` deleting and hold them while the block removes them; the keys now ours.

        Exactly one process at a time holds a key's claim: another prune removing it, or an
        artifact already gone, leaves it out. The mark is committed before the block runs, so a
        prune killed inside the block leaves ``deleting`` rows; its claims die with its process
        (PostgreSQL: session advisory locks, freed when the connection drops; SQLite: a lock
        file) and the next prune takes the rows over. Forget the rows inside the block.
        """
        if not keys:
            yield set()
            return
        if not self.is_server:
            with self._sqlite_lock():
                yield self._mark_deleting(keys)
            return
        from sqlalchemy import func, select

        with self._connection() as connection:
            locks = {key: _lock_id(f"remove {key}") for key in sorted(keys)}
            held = [key for key, lock in locks.items() if connection.execute(select(func.pg_try_advisory_lock(lock))).scalar_one()]
            connection.commit()
            try:
                yield self._mark_deleting(held) if held else set()
            finally:
                for key in held:
                    connection.execute(select(func.pg_advisory_unlock(locks[key])))
                connection.commit()

    def _mark_deleting(self, keys: Sequence[str]) -> set[str]:
        from sqlalchemy import update

        from .schema import ArtifactRow

        table = ArtifactRow.__table__
        marked: set[str] = set()
        with self.session() as session:
            for chunk in _chunks(sorted(keys)):
                statement = (
                    update(table)
                    .where(table.c.key.in_(chunk), table.c.state.in_((PUBLISHED, DELETING)))
                    .values(state=DELETING)
                    .returning(table.c.key)
                )
                marked.update(session.exec(statement).scalars())  # type: ignore[call-overload]
        return marked

    def forget_removed(self, keys: Sequence[str], events: Sequence[Mapping[str, Any]]) -> None:
        """Forget the rows of removed artifacts and record the events of their removal, at once."""
        from sqlalchemy import delete

        from . import schema

        table = schema.ArtifactRow.__table__
        with self.session() as session:
            for chunk in _chunks(sorted(keys)):
                session.exec(delete(table).where(table.c.key.in_(chunk)))  # type: ignore[call-overload]
            # Journaled too: a concurrent sync may have stored some of them first.
            schema.insert_new_events(session, events)

    def dependents(self) -> dict[str, list[str]]:
        """For each key that published artifacts depend on: the keys of those artifacts."""
        found: dict[str, list[str]] = {}
        query = "SELECT key, depends_on FROM artifact WHERE state = :state AND CAST(depends_on AS TEXT) <> '[]'"
        for key, depends_on in self._rows(query, {"state": PUBLISHED}):
            for dependency in _json(depends_on) or ():
                found.setdefault(dependency, []).append(key)
        return found

    # --- pins ---------------------------------------------------------------------------------

    def pinned(self) -> set[str]:
        return {key for (key,) in self._rows("SELECT key FROM pin WHERE pinned")}

    # --- observations and events ----------------------------------------------------------------

    def latest_observation(self, gpu_type: str) -> Observation | None:
        """The newest fingerprint seen on ``gpu_type`` (a Modal type, or "cpu" for no GPU)."""
        rows = self._rows(
            "SELECT facts, gpu_type, host, first_seen_at, last_seen_at, seen FROM observation "
            "WHERE gpu_type = :gpu_type ORDER BY last_seen_at DESC LIMIT 1",
            {"gpu_type": gpu_type},
        )
        if not rows:
            return None
        facts, *rest = rows[0]
        return Observation(Facts.from_json(_json(facts)), *rest)

    def events(self, *, since: float | None = None, kinds: Sequence[str] | None = None) -> list[Event]:
        """Events at or after ``since`` (Unix seconds), oldest first."""
        query = "SELECT at, kind, layer, key, model, seconds, bytes, host FROM event WHERE at >= :since"
        params: dict[str, Any] = {"since": float("-inf") if since is None else since}
        if kinds is not None:
            names = {f"kind{index}": kind for index, kind in enumerate(kinds)} or {"kind0": None}
            query += f" AND kind IN ({', '.join(':' + name for name in names)})"
            params.update(names)
        return [Event(*row) for row in self._rows(query + " ORDER BY at, id", params)]

    def count_events(self, kind: str) -> int:
        return int(self._rows("SELECT count(*) FROM event WHERE kind = :kind", {"kind": kind})[0][0])

    # --- build leases (leases.DbLeases) -----------------------------------------------------------

    def lease(self, layer: str, key: str) -> dict[str, Any] | None:
        """The lease row's fields (owner, token, expires_at, process), or None."""
        rows = self._rows(
            "SELECT owner, token, expires_at, process FROM lease WHERE layer = :layer AND key = :key",
            {"layer": layer, "key": key},
        )
        return dict(zip(("owner", "token", "expires_at", "process"), rows[0])) if rows else None

    def insert_lease(self, layer: str, key: str, fields: Mapping[str, Any]) -> bool:
        """Create the lease row; False when one exists already (the unique key decides)."""
        from . import schema

        table = schema.LeaseRow.__table__
        with self.session() as session:
            statement = schema.insert(session, table).values(layer=layer, key=key, **fields)
            statement = statement.on_conflict_do_nothing(index_elements=["layer", "key"]).returning(table.c.id)
            return session.exec(statement).first() is not None

    def replace_lease(self, layer: str, key: str, token: str, fields: Mapping[str, Any]) -> bool:
        """Overwrite the lease only if it still carries ``token``: one statement, one winner."""
        from .schema import LeaseRow
        from sqlalchemy import update

        statement = (
            update(LeaseRow)
            .where(LeaseRow.layer == layer, LeaseRow.key == key, LeaseRow.token == token)
            .values(**fields)
        )
        with self.session() as session:
            return session.exec(statement).rowcount == 1  # type: ignore[call-overload]

    def drop_lease(self, layer: str, key: str, token: str) -> None:
        from .schema import LeaseRow
        from sqlalchemy import delete

        statement = delete(LeaseRow).where(LeaseRow.layer == layer, LeaseRow.key == key, LeaseRow.token == token)
        with self.session() as session:
            session.exec(statement)  # type: ignore[call-overload]

    def drop_dead_leases(self, *, expired_before: float) -> int:
        """Remove leases that expired before ``expired_before``; how many."""
        from .schema import LeaseRow
        from sqlalchemy import delete

        statement = delete(LeaseRow).where(LeaseRow.expires_at < expired_before)
        with self.session() as session:
            return session.exec(statement).rowcount  # type: ignore[call-overload]


def _observation_values(record: Mapping[str, Any]) -> dict[str, Any]:
    environment = environment_facts(Facts.from_json(record["facts"]))
    values = {name: f.thaw(value) for name, value in environment.values().items()}
    at = float(record["at"])
    return {
        "digest": hashlib.sha256(canonical_json(values).encode()).hexdigest(),
        "gpu_type": str(environment.value(f.GPU_TYPE, f.NONE)), "facts": environment.to_json(),
        "host": str(record.get("host", "")), "first_seen_at": at, "last_seen_at": at, "seen": 1,
    }  # fmt: skip


def _artifact(row: Sequence[Any]) -> Artifact:
    key, layer, model, relpath, size, files, created_at, last_used_at, builder, facts, depends_on, checksum = row
    return Artifact(
        key=key, layer=layer, model=model, relpath=relpath, bytes=size, files=files,
        created_at=created_at, last_used_at=last_used_at, builder=builder,
        facts={name: f.freeze(value) for name, value in _json(facts).items()},
        depends_on=tuple(_json(depends_on) or ()), checksum=checksum,
    )  # fmt: skip


def _json(value: Any) -> Any:
    """A JSON column's value: SQLite hands back text, PostgreSQL's driver the decoded value."""
    return json.loads(value) if isinstance(value, (str, bytes)) else value


def _filters(**equal: str | None) -> tuple[str, dict[str, str]]:
    """`` WHERE a = :a AND ...`` for the filters that are set, and their parameters."""
    params = {column: value for column, value in equal.items() if value is not None}
    if not params:
        return " WHERE 1 = 1", {}
    return " WHERE " + " AND ".join(f"{column} = :{column}" for column in params), params


def _where_in(query: str, column: str, values: Sequence[str]) -> tuple[str, dict[str, str]]:
    names = {f"v{index}": value for index, value in enumerate(values)}
    return f"{query} WHERE {column} IN ({', '.join(':' + name for name in names)})", names


def _chunks(values: list[str], size: int = 500) -> Iterator[list[str]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def _revisions() -> dict[str, str | None]:
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


def _sqlite_database(url: str) -> str | None:
    """The database file of a ``sqlite:///PATH`` URL ("" or ":memory:" in memory); None for others."""
    scheme, separator, rest = url.partition("://")
    if not separator or not scheme.split("+")[0] == "sqlite":
        return None
    return rest[1:].split("?", 1)[0] if rest.startswith("/") else ":memory:"


_URL_FORMS = "use sqlite:///PATH or postgresql+psycopg://USER:PASSWORD@HOST:PORT/DATABASE"


def _server(url: str) -> tuple[str, None, Engine]:
    """(url, no SQLite file, engine) for a database server's URL, or one clear error."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError
    from sqlmodel import create_engine

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        raise ManifestUnreachable(f"invalid database URL {_safe(url)}: {_URL_FORMS}") from None
    if parsed.drivername in ("postgresql", "postgres"):
        # The URL a provider hands out names no driver; the postgres extra installs psycopg.
        parsed = parsed.set(drivername="postgresql+psycopg")
        url = parsed.render_as_string(hide_password=False)
    if parsed.get_backend_name() != "postgresql":
        raise ManifestUnreachable(f"unsupported database URL {_safe(url)}: {_URL_FORMS}")
    driver = parsed.get_driver_name()
    try:
        # A server that never answers (a firewall dropping packets) fails in seconds, not minutes.
        timeout = {"connect_timeout": 10} if driver in ("psycopg", "psycopg2") else {}
        return url, None, create_engine(url, pool_pre_ping=True, connect_args=timeout)
    except ImportError:
        raise ManifestUnreachable(
            f"cannot use database URL {_safe(url)}: its driver {driver} is not installed "
            "(cachekeeper's postgres extra installs psycopg: pip install 'cachekeeper[postgres]')"
        ) from None
    except (ArgumentError, SQLAlchemyError) as error:
        raise ManifestUnreachable(f"cannot use database URL {_safe(url)}: {_first_line(error)}") from None


def _revision(connection: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()


def _has_tables(connection: Connection) -> bool:
    from sqlalchemy import inspect

    return bool(set(inspect(connection).get_table_names()) - {"alembic_version"})


def _lock_id(name: str) -> int:
    """A 64-bit PostgreSQL advisory lock number, from a name within cachekeeper's own space."""
    return int.from_bytes(hashlib.sha256(f"cachekeeper: {name}".encode()).digest()[:8], "big", signed=True)


def _backup_sqlite(database: Path, backup: Path) -> None:
    """A consistent copy, even while another process writes: SQLite's own online backup."""
    with closing(sqlite3.connect(database)) as source, closing(sqlite3.connect(backup)) as target:
        source.backup(target)


def _safe(url: str) -> str:
    """The URL with any password hidden, for messages."""
    return re.sub(r"(//[^/:@]*:)[^/@]*@", r"\1***@", url)


def _first_line(error: Exception) -> str:
    text = str(getattr(error, "orig", None) or error)
    return text.strip().splitlines()[0] if text.strip() else type(error).__name__
