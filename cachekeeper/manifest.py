"""The manifest: the SQL index of artifacts, observed fingerprints and events.

SQLite at ``<root>/.cachekeeper/manifest.db`` by default, PostgreSQL for fleets; the schema is
created and changed only by the alembic revisions in ``migrations/``. On PostgreSQL many processes
write at once, so every write that can race is one statement whose outcome the database decides
(a unique constraint, ON CONFLICT, a conditional UPDATE, an advisory lock), never a read followed
by a write decided here. Row classes never leave this module: callers get the frozen values of
store.py and facts.py.

The manifest is an index, not the truth: sidecars say what exists, and ``doctor`` can rebuild
the manifest from them and from the journals.
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, UniqueConstraint, case, delete, func, or_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, DatabaseError, OperationalError, SQLAlchemyError
from sqlmodel import Field, Session, SQLModel, create_engine, select

from . import facts as f
from .errors import ManifestError, ManifestUnreachable, SchemaOutOfDate, SchemaTooNew
from .facts import Facts
from .keys import canonical_json
from .leases import LeaseInfo
from .store import Artifact, Roots

PUBLISHED = "published"
DELETING = "deleting"  # a prune removed the sidecar and is removing the files

# Journal record kinds that change pins. The CLI journals them, like containers journal what they
# do, so that ``doctor`` can rebuild the pins from the journals too.
PINNED = "pinned"
UNPINNED = "unpinned"

# Facts that describe the machine and its software, as opposed to what it was asked to run.
_DEPLOY_PREFIXES = (f.MODEL, f.ENGINE_PREFIX)


class ArtifactRow(SQLModel, table=True):
    __tablename__ = "artifact"

    id: int | None = Field(default=None, primary_key=True)
    key: str = Field(unique=True)
    layer: str = Field(index=True)
    model: str = Field(index=True)
    relpath: str
    state: str = PUBLISHED
    bytes: int = Field(sa_type=BigInteger)
    files: int
    created_at: float
    last_used_at: float = Field(index=True)
    builder: str
    facts: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    depends_on: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    checksum: str | None = None


class PinRow(SQLModel, table=True):
    """A key that prune must never remove; ``pinned`` false once unpinned (``at`` orders the two)."""

    __tablename__ = "pin"

    key: str = Field(primary_key=True)
    pinned: bool
    at: float
    host: str


class ObservationRow(SQLModel, table=True):
    __tablename__ = "observation"

    id: int | None = Field(default=None, primary_key=True)
    digest: str = Field(unique=True)
    gpu_type: str = Field(index=True)
    facts: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    host: str
    first_seen_at: float
    last_seen_at: float = Field(index=True)
    seen: int = 1


class EventRow(SQLModel, table=True):
    __tablename__ = "event"

    id: int | None = Field(default=None, primary_key=True)
    uid: str = Field(unique=True)
    at: float = Field(index=True)
    kind: str = Field(index=True)
    layer: str | None = None
    key: str | None = None
    model: str | None = None
    seconds: float | None = None
    bytes: int | None = Field(default=None, sa_type=BigInteger)
    host: str | None = None


class JournalCursorRow(SQLModel, table=True):
    __tablename__ = "journal_cursor"

    name: str = Field(primary_key=True)
    offset: int = Field(default=0, sa_type=BigInteger)
    closed: bool = False


class LeaseRow(SQLModel, table=True):
    """A build lease, when the manifest is a server database (see leases.DbLeases)."""

    __tablename__ = "lease"
    __table_args__ = (UniqueConstraint("layer", "key", name="uq_lease_layer_key"),)

    id: int | None = Field(default=None, primary_key=True)
    layer: str
    key: str
    owner: str
    token: str
    expires_at: float = Field(index=True)
    process: str = ""


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

    def __init__(self, url: str, engine: Engine) -> None:
        self.url = url
        self.engine = engine

    @property
    def is_server(self) -> bool:
        """A database server that many containers may write at once (not a SQLite file)."""
        return self.engine.dialect.name != "sqlite"

    # --- opening and schema --------------------------------------------------------------------

    @classmethod
    def connect(cls, url: str) -> Manifest:
        """A Manifest without any schema check: for ``db`` commands and migrations."""
        try:
            parsed = make_url(url)
        except (ArgumentError, ValueError):
            raise ManifestUnreachable(f"invalid database URL {_safe(url)}: {_URL_FORMS}") from None
        if parsed.drivername in ("postgresql", "postgres"):
            # The URL a provider hands out names no driver; the postgres extra installs psycopg.
            parsed = parsed.set(drivername="postgresql+psycopg")
            url = parsed.render_as_string(hide_password=False)
        backend = parsed.get_backend_name()
        if backend == "sqlite":
            if parsed.database and "\0" in parsed.database:
                raise ManifestUnreachable(f"invalid database URL {_safe(url)!r}: a path cannot hold a NUL")
            if parsed.database and parsed.database != ":memory:":
                try:
                    Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
                except OSError as error:
                    raise ManifestUnreachable(
                        f"cannot create the manifest's directory for {parsed.database}: {error.strerror}"
                    ) from None
            # SQLite on a network volume has no reliable shared memory for WAL: keep its rollback
            # journal, and wait for the lock instead of failing at once.
            engine = create_engine(url, connect_args={"timeout": 60})
        elif backend == "postgresql":
            driver = parsed.get_driver_name()
            try:
                engine = create_engine(url, pool_pre_ping=True, connect_args=_connect_args(driver))
            except ImportError:
                raise ManifestUnreachable(
                    f"cannot use database URL {_safe(url)}: its driver {driver} is not installed "
                    "(cachekeeper's postgres extra installs psycopg: pip install 'cachekeeper[postgres]')"
                ) from None
            except (ArgumentError, SQLAlchemyError) as error:
                raise ManifestUnreachable(
                    f"cannot use database URL {_safe(url)}: {_first_line(error)}"
                ) from None
        else:
            raise ManifestUnreachable(f"unsupported database URL {_safe(url)}: {_URL_FORMS}")
        return cls(url, engine)

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
            if self.engine.dialect.name != "sqlite" or not self.engine.url.database:
                raise SchemaOutOfDate(
                    f"the manifest at {_safe(self.url)} has schema revision {current}, this cachekeeper "
                    f"needs {head}: run `cachekeeper --db URL db upgrade` with this URL (cachekeepers "
                    "older than this one will then refuse it until they are upgraded too)"
                )
            database = Path(self.engine.url.database)
            _backup_sqlite(database, database.with_name(f"{database.name}.bak-{current}"))
            self._run_alembic(connection, "upgrade", "head")

    def _too_new(self, current: str) -> SchemaTooNew:
        return SchemaTooNew(
            f"the manifest at {_safe(self.url)} has schema revision {current}, newer than this "
            f"cachekeeper knows (head {self.head()}): upgrade cachekeeper"
        )

    def _alembic_config(self) -> Any:
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(migrations_dir()))
        config.set_main_option("sqlalchemy.url", self.url.replace("%", "%%"))
        return config

    def head(self) -> str:
        from alembic.script import ScriptDirectory

        return ScriptDirectory.from_config(self._alembic_config()).get_current_head()

    def _known_revisions(self) -> set[str]:
        from alembic.script import ScriptDirectory

        script = ScriptDirectory.from_config(self._alembic_config())
        return {rev.revision for rev in script.walk_revisions()}

    def current(self) -> str | None:
        """The schema revision stamped in the database, or None when there is none."""
        with self._connection() as connection:
            return _revision(connection)

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

        config = self._alembic_config()
        config.attributes["connection"] = connection
        getattr(command, direction)(config, revision)

    @contextmanager
    def _schema_transaction(self) -> Iterator[Connection]:
        """One transaction in which the schema is read and changed by this process alone.

        PostgreSQL changes a schema transactionally: a transaction-scoped advisory lock makes
        concurrent first opens and upgrades wait for each other, and the later ones then find the
        work done. SQLite's file has one writer per machine; a lock file beside it does the same.
        """
        with self._connection() as connection, self._sqlite_lock(), connection.begin():
            if connection.dialect.name == "postgresql":
                connection.execute(select(func.pg_advisory_xact_lock(_lock_id("schema"))))
            yield connection

    @contextmanager
    def _sqlite_lock(self) -> Iterator[None]:
        """Exclusive use of ``<manifest.db>.lock`` for as long as the block runs; waits for it."""
        if self.engine.dialect.name != "sqlite" or self.engine.url.database in (None, "", ":memory:"):
            yield
            return
        import fcntl

        with open(f"{self.engine.url.database}.lock", "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX)
            except OSError:
                pass  # a file system without locks: SQLite there has a single writer anyway
            yield  # closing the file releases the lock, also when the process dies

    @contextmanager
    def _connection(self) -> Iterator[Any]:
        try:
            with self.engine.connect() as connection:
                yield connection
        except OperationalError as error:
            raise ManifestUnreachable(f"cannot open the manifest at {_safe(self.url)}: {_first_line(error)}") from None
        except DatabaseError as error:
            raise self._damaged(error) from None

    @contextmanager
    def session(self) -> Iterator[Session]:
        try:
            with Session(self.engine) as session:
                yield session
                session.commit()
        except OperationalError as error:
            raise ManifestError(f"the manifest at {_safe(self.url)} failed: {_first_line(error)}") from None
        except DatabaseError as error:
            raise self._damaged(error) from None

    def _damaged(self, error: DatabaseError) -> Exception:
        """SQLite's own words for a file that is no database, or a damaged one; any other database
        error (a constraint, a type) is a bug and keeps its traceback."""
        if type(error) is not DatabaseError:
            return error
        return ManifestError(
            f"the manifest at {_safe(self.url)} is damaged ({_first_line(error)}): "
            "`cachekeeper doctor` moves it aside and rebuilds it from the sidecars and journals"
        )

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
        Rows are written in key order, so that concurrent folds wait for each other rather than
        deadlock.
        """
        with self.session() as session:
            fresh = {r["uid"]: r for r in records if r.get("kind") != "closed"}
            applied = _insert_new_events(session, [fresh[uid] for uid in sorted(fresh)])
            observed = [fresh[uid] for uid in applied if fresh[uid].get("kind") == "observed"]
            observations = [_observation_values(r) for r in observed if isinstance(r.get("facts"), dict)]
            for values in sorted(observations, key=lambda values: (values["digest"], values["last_seen_at"])):
                _upsert_observation(session, values)
            for uid in applied:
                if fresh[uid].get("kind") in (PINNED, UNPINNED) and fresh[uid].get("key"):
                    _set_pin(session, fresh[uid])
            by_key = sorted(artifacts, key=lambda artifact: artifact.key)
            indexed = sum(_insert_artifact(session, artifact) for artifact in by_key)
            last_hit: dict[str, float] = {}
            for record in records:
                if record.get("kind") == "hit" and record.get("key"):
                    key, at = str(record["key"]), float(record["at"])
                    last_hit[key] = max(at, last_hit.get(key, at))
            for key in sorted(last_hit):
                _touch(session, key, last_hit[key])
            for name in sorted(cursors):
                _advance_cursor(session, name, *cursors[name])
        return FoldResult(records=len(applied), artifacts=indexed)

    def journal_cursors(self) -> dict[str, tuple[int, bool]]:
        with self.session() as session:
            return {row.name: (row.offset, row.closed) for row in session.exec(select(JournalCursorRow))}

    # --- artifacts ------------------------------------------------------------------------------

    def record_artifact(self, artifact: Artifact) -> bool:
        """Index a published artifact. False when it was already indexed (nothing changes)."""
        with self.session() as session:
            return _insert_artifact(session, artifact)

    def artifact(self, key: str) -> Artifact | None:
        with self.session() as session:
            row = _artifact_row_for(session, key)
            return None if row is None else _artifact(row)

    def artifacts(
        self, *, layer: str | None = None, model: str | None = None, state: str | None = PUBLISHED
    ) -> list[Artifact]:
        """Artifacts, most recently used first."""
        query = select(ArtifactRow).order_by(ArtifactRow.last_used_at.desc(), ArtifactRow.key)
        if layer is not None:
            query = query.where(ArtifactRow.layer == layer)
        if model is not None:
            query = query.where(ArtifactRow.model == model)
        if state is not None:
            query = query.where(ArtifactRow.state == state)
        with self.session() as session:
            return [_artifact(row) for row in session.exec(query)]

    def keys_in_state(self, state: str) -> list[tuple[str, str]]:
        """(layer, key) of every artifact in ``state``."""
        with self.session() as session:
            query = select(ArtifactRow.layer, ArtifactRow.key).where(ArtifactRow.state == state)
            return [(layer, key) for layer, key in session.exec(query)]

    def set_state(self, key: str, state: str) -> None:
        with self.session() as session:
            row = _artifact_row_for(session, key)
            if row is not None:
                row.state = state
                session.add(row)

    def forget_published(self, key: str, created_at: float) -> None:
        """Forget the row of an artifact whose sidecar is gone, unless a prune is removing it
        (``deleting``) or it was published anew since (another ``created_at``)."""
        table = ArtifactRow.__table__
        ours = (table.c.key == key, table.c.state == PUBLISHED, table.c.created_at == created_at)
        statement = delete(table).where(*ours)
        with self.session() as session:
            session.exec(statement)  # type: ignore[call-overload]

    def forget(self, key: str) -> None:
        table = ArtifactRow.__table__
        with self.session() as session:  # one statement: a row another process forgot is no error
            session.exec(delete(table).where(table.c.key == key))  # type: ignore[call-overload]

    @contextmanager
    def claim_removal(self, key: str) -> Iterator[bool]:
        """Mark ``key`` deleting and hold it while the block removes it; False if it is not ours.

        Exactly one process at a time holds a key's claim: another prune removing it, or an
        artifact already gone, gives False. The mark is committed before the block runs, so a
        prune killed inside the block leaves a ``deleting`` row; its claim dies with its process
        (PostgreSQL: a session advisory lock, freed when the connection drops; SQLite: a lock
        file) and the next prune takes the row over. Forget the row inside the block.
        """
        if self.engine.dialect.name != "postgresql":
            with self._sqlite_lock():
                yield self._mark_deleting(key)
            return
        lock = _lock_id(f"remove {key}")
        with self._connection() as connection:
            claimed = connection.execute(select(func.pg_try_advisory_lock(lock))).scalar_one()
            connection.commit()
            try:
                yield claimed and self._mark_deleting(key)
            finally:
                if claimed:
                    connection.execute(select(func.pg_advisory_unlock(lock)))
                    connection.commit()

    def _mark_deleting(self, key: str) -> bool:
        table = ArtifactRow.__table__
        statement = (
            update(table)
            .where(table.c.key == key, table.c.state.in_((PUBLISHED, DELETING)))
            .values(state=DELETING)
        )
        with self.session() as session:
            return session.exec(statement).rowcount == 1

    def dependents(self) -> dict[str, list[str]]:
        """For each key that published artifacts depend on: the keys of those artifacts."""
        query = select(ArtifactRow.key, ArtifactRow.depends_on).where(ArtifactRow.state == PUBLISHED)
        found: dict[str, list[str]] = {}
        with self.session() as session:
            for key, depends_on in session.exec(query):
                for dependency in depends_on or ():
                    found.setdefault(dependency, []).append(key)
        return found

    # --- pins ---------------------------------------------------------------------------------

    def pinned(self) -> set[str]:
        with self.session() as session:
            return set(session.exec(select(PinRow.key).where(PinRow.pinned == True)))  # noqa: E712

    # --- observations and events ----------------------------------------------------------------

    def latest_observation(self, gpu_type: str) -> Observation | None:
        """The newest fingerprint seen on ``gpu_type`` (a Modal type, or "none" for no GPU)."""
        query = (
            select(ObservationRow)
            .where(ObservationRow.gpu_type == gpu_type)
            .order_by(ObservationRow.last_seen_at.desc())
            .limit(1)
        )
        with self.session() as session:
            row = session.exec(query).first()
            if row is None:
                return None
            return Observation(
                Facts.from_json(row.facts), row.gpu_type, row.host,
                row.first_seen_at, row.last_seen_at, row.seen,
            )  # fmt: skip

    def record_events(self, events: Sequence[Mapping[str, Any]]) -> None:
        """Store events that are journaled too: a concurrent sync may have stored them first."""
        with self.session() as session:
            _insert_new_events(session, events)

    def events(self, *, since: float | None = None, kinds: Sequence[str] | None = None) -> list[Event]:
        """Events at or after ``since`` (Unix seconds), oldest first."""
        query = select(EventRow).order_by(EventRow.at, EventRow.id)
        if since is not None:
            query = query.where(EventRow.at >= since)
        if kinds is not None:
            query = query.where(EventRow.kind.in_(list(kinds)))
        with self.session() as session:
            return [
                Event(row.at, row.kind, row.layer, row.key, row.model, row.seconds, row.bytes, row.host)
                for row in session.exec(query)
            ]

    def count_events(self, kind: str) -> int:
        with self.session() as session:
            query = select(func.count()).select_from(EventRow).where(EventRow.kind == kind)
            return session.exec(query).one()

    # --- build leases (leases.DbLeases) -----------------------------------------------------------

    def lease(self, layer: str, key: str) -> LeaseInfo | None:
        with self.session() as session:
            row = session.exec(select(LeaseRow).where(LeaseRow.layer == layer, LeaseRow.key == key)).first()
            return None if row is None else LeaseInfo(row.owner, row.token, row.expires_at, row.process)

    def insert_lease(self, layer: str, key: str, info: LeaseInfo) -> bool:
        """Create the lease row; False when one exists already (the unique key decides)."""
        table = LeaseRow.__table__
        with self.session() as session:
            statement = _insert(session, table).values(layer=layer, key=key, **_lease_fields(info))
            statement = statement.on_conflict_do_nothing(index_elements=["layer", "key"]).returning(table.c.id)
            return session.exec(statement).first() is not None

    def replace_lease(self, layer: str, key: str, token: str, info: LeaseInfo) -> bool:
        """Overwrite the lease only if it still carries ``token``: one statement, one winner."""
        statement = (
            update(LeaseRow)
            .where(LeaseRow.layer == layer, LeaseRow.key == key, LeaseRow.token == token)
            .values(**_lease_fields(info))
        )
        with self.session() as session:
            return session.exec(statement).rowcount == 1  # type: ignore[call-overload]

    def drop_lease(self, layer: str, key: str, token: str) -> None:
        statement = delete(LeaseRow).where(LeaseRow.layer == layer, LeaseRow.key == key, LeaseRow.token == token)
        with self.session() as session:
            session.exec(statement)  # type: ignore[call-overload]

    def drop_dead_leases(self, *, expired_before: float) -> int:
        """Remove leases that expired before ``expired_before``; how many."""
        statement = delete(LeaseRow).where(LeaseRow.expires_at < expired_before)
        with self.session() as session:
            return session.exec(statement).rowcount  # type: ignore[call-overload]


def _lease_fields(info: LeaseInfo) -> dict[str, Any]:
    return {"owner": info.owner, "token": info.token, "expires_at": info.expires_at, "process": info.process}


@dataclass(frozen=True, slots=True)
class FoldResult:
    records: int  # journal records applied for the first time
    artifacts: int  # artifacts newly indexed


def _artifact_row_for(session: Session, key: str) -> ArtifactRow | None:
    return session.exec(select(ArtifactRow).where(ArtifactRow.key == key)).first()


def _insert(session: Session, table: Any) -> Any:
    """An INSERT that can say ON CONFLICT, in the session's SQL dialect."""
    return (postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert)(table)


def _insert_artifact(session: Session, artifact: Artifact) -> bool:
    table = ArtifactRow.__table__
    data = artifact.to_json()
    data.pop("format")
    # Rebuilt after a prune was killed half way through removing it: this is a new artifact.
    stale = (table.c.key == artifact.key, table.c.state == DELETING, table.c.created_at != artifact.created_at)
    session.exec(delete(table).where(*stale))
    statement = _insert(session, table).values(**data, state=PUBLISHED)
    statement = statement.on_conflict_do_nothing(index_elements=["key"]).returning(table.c.id)
    return session.exec(statement).first() is not None


def _insert_new_events(session: Session, records: Sequence[Mapping[str, Any]]) -> list[str]:
    """Store the records whose uid is not stored yet; the uids this call stored."""
    table = EventRow.__table__
    stored: list[str] = []
    for start in range(0, len(records), 500):
        rows = [_event_fields(record) for record in records[start : start + 500]]
        statement = _insert(session, table).values(rows).on_conflict_do_nothing(index_elements=["uid"])
        stored.extend(session.exec(statement.returning(table.c.uid)).scalars())
    return stored


def _touch(session: Session, key: str, at: float) -> None:
    table = ArtifactRow.__table__
    session.exec(update(table).where(table.c.key == key, table.c.last_used_at < at).values(last_used_at=at))


def _set_pin(session: Session, record: Mapping[str, Any]) -> None:
    """The newest pin or unpin wins, whatever order journals are folded in and by whom."""
    table = PinRow.__table__
    values = {"key": str(record["key"]), "pinned": record["kind"] == PINNED, "at": float(record["at"]),
              "host": str(record.get("host", ""))}  # fmt: skip
    session.exec(_insert(session, table).values(**values).on_conflict_do_nothing(index_elements=["key"]))
    session.exec(update(table).where(table.c.key == values["key"], table.c.at < values["at"]).values(**values))


def _observation_values(record: Mapping[str, Any]) -> dict[str, Any]:
    environment = environment_facts(Facts.from_json(record["facts"]))
    values = {name: f.thaw(value) for name, value in environment.values().items()}
    at = float(record["at"])
    return {
        "digest": hashlib.sha256(canonical_json(values).encode()).hexdigest(),
        "gpu_type": str(environment.value(f.GPU_TYPE, f.NONE)), "facts": environment.to_json(),
        "host": str(record.get("host", "")), "first_seen_at": at, "last_seen_at": at, "seen": 1,
    }  # fmt: skip


def _upsert_observation(session: Session, values: Mapping[str, Any]) -> None:
    """One more sighting of a fingerprint: the newest sighting names the host."""
    table = ObservationRow.__table__
    statement = _insert(session, table).values(**values)
    sighting = statement.excluded
    newer = sighting.last_seen_at >= table.c.last_seen_at
    statement = statement.on_conflict_do_update(
        index_elements=["digest"],
        set_={
            "seen": table.c.seen + 1,
            "last_seen_at": case((newer, sighting.last_seen_at), else_=table.c.last_seen_at),
            "host": case((newer, sighting.host), else_=table.c.host),
            "first_seen_at": case(
                (sighting.first_seen_at < table.c.first_seen_at, sighting.first_seen_at),
                else_=table.c.first_seen_at,
            ),
        },
    )
    session.exec(statement)


def _advance_cursor(session: Session, name: str, offset: int, closed: bool) -> None:
    """A journal's cursor only moves forward, so a slower concurrent sync never rewinds it."""
    table = JournalCursorRow.__table__
    statement = _insert(session, table).values(name=name, offset=offset, closed=closed)
    theirs = statement.excluded
    statement = statement.on_conflict_do_update(
        index_elements=["name"],
        set_={
            "offset": case((theirs.offset > table.c.offset, theirs.offset), else_=table.c.offset),
            "closed": or_(table.c.closed, theirs.closed),
        },
    )
    session.exec(statement)


_EVENT_FIELDS = {"uid", "at", "kind", "layer", "key", "model", "seconds", "bytes", "host"}


def _event_fields(event: Mapping[str, Any]) -> dict[str, Any]:
    return {name: event.get(name) for name in _EVENT_FIELDS}


def _artifact(row: ArtifactRow) -> Artifact:
    return Artifact(
        key=row.key, layer=row.layer, model=row.model, relpath=row.relpath, bytes=row.bytes,
        files=row.files, created_at=row.created_at, last_used_at=row.last_used_at,
        builder=row.builder, facts={name: f.freeze(value) for name, value in row.facts.items()},
        depends_on=tuple(row.depends_on or ()), checksum=row.checksum,
    )  # fmt: skip


_URL_FORMS = "use sqlite:///PATH or postgresql+psycopg://USER:PASSWORD@HOST:PORT/DATABASE"


def _connect_args(driver: str) -> dict[str, Any]:
    # A server that never answers (a firewall dropping packets) fails in seconds, not minutes.
    return {"connect_timeout": 10} if driver in ("psycopg", "psycopg2") else {}


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
    """The URL with any password hidden, for messages; also when the URL cannot be parsed."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return re.sub(r"(//[^/:@]*:)[^/]*@", r"\1***@", url)


def _first_line(error: Exception) -> str:
    text = str(getattr(error, "orig", None) or error)
    return text.strip().splitlines()[0] if text.strip() else type(error).__name__
