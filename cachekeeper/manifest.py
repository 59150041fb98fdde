"""The manifest: the SQL index of artifacts, observed fingerprints and events.

SQLite at ``<root>/.cachekeeper/manifest.db`` by default, PostgreSQL for fleets; the schema is
created and changed only by the alembic revisions in ``migrations/``. Row classes never leave this
module: callers get the frozen values of store.py and facts.py.

The manifest is an index, not the truth: sidecars say what exists, and ``doctor`` can rebuild
the manifest from them and from the journals.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, func
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, OperationalError, SQLAlchemyError
from sqlmodel import Field, Session, SQLModel, create_engine, select

from . import facts as f
from .errors import ManifestError, ManifestUnreachable, SchemaOutOfDate, SchemaTooNew
from .facts import Facts
from .keys import canonical_json
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

    # --- opening and schema --------------------------------------------------------------------

    @classmethod
    def connect(cls, url: str) -> Manifest:
        """A Manifest without any schema check: for ``db`` commands and migrations."""
        try:
            parsed = make_url(url)
        except ArgumentError:
            raise ManifestUnreachable(
                f"invalid database URL {url!r}: use sqlite:///PATH or postgresql+psycopg://USER@HOST/DB"
            ) from None
        if parsed.get_backend_name() == "sqlite":
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
        else:
            try:
                engine = create_engine(url, pool_pre_ping=True)
            except (ArgumentError, ImportError, SQLAlchemyError) as error:
                raise ManifestUnreachable(f"cannot use database URL {_safe(url)}: {error}") from None
        return cls(url, engine)

    @classmethod
    def open(cls, url: str) -> Manifest:
        """Connect and make sure the schema is the one this code knows.

        A new database gets the schema. An older SQLite file is backed up and upgraded in place:
        it has one writer. An older server database is left alone, with the command to run,
        because other deployers may still run the older cachekeeper against it.
        """
        manifest = cls.connect(url)
        current, head = manifest.current(), manifest.head()
        if current == head:
            return manifest
        if current is None:
            if manifest._has_tables():
                raise ManifestError(
                    f"{_safe(url)} holds tables but no cachekeeper schema revision: it is not a "
                    "cachekeeper manifest; point --db elsewhere or move the file away"
                )
            manifest.upgrade()
            return manifest
        if current not in manifest._known_revisions():
            raise SchemaTooNew(
                f"the manifest at {_safe(url)} has schema revision {current}, newer than this "
                f"cachekeeper knows (head {head}): upgrade cachekeeper"
            )
        if manifest.engine.dialect.name == "sqlite" and manifest.engine.url.database:
            database = Path(manifest.engine.url.database)
            shutil.copy2(database, database.with_name(f"{database.name}.bak-{current or 'none'}"))
            manifest.upgrade()
            return manifest
        raise SchemaOutOfDate(
            f"the manifest at {_safe(url)} has schema revision {current}, this cachekeeper needs "
            f"{head}: run `cachekeeper --db URL db upgrade`"
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
        from alembic.runtime.migration import MigrationContext

        with self._connection() as connection:
            return MigrationContext.configure(connection).get_current_revision()

    def _has_tables(self) -> bool:
        from sqlalchemy import inspect

        with self._connection() as connection:
            return bool(set(inspect(connection).get_table_names()) - {"alembic_version"})

    def upgrade(self, revision: str = "head") -> tuple[str | None, str | None]:
        """Run the migrations up to ``revision``; (before, after)."""
        return self._migrate("upgrade", revision)

    def downgrade(self, revision: str) -> tuple[str | None, str | None]:
        return self._migrate("downgrade", revision)

    def _migrate(self, direction: str, revision: str) -> tuple[str | None, str | None]:
        from alembic import command

        before = self.current()
        config = self._alembic_config()
        with self._connection() as connection, connection.begin():
            config.attributes["connection"] = connection
            getattr(command, direction)(config, revision)
        return before, self.current()

    @contextmanager
    def _connection(self) -> Iterator[Any]:
        try:
            with self.engine.connect() as connection:
                yield connection
        except OperationalError as error:
            raise ManifestUnreachable(f"cannot open the manifest at {_safe(self.url)}: {_first_line(error)}") from None

    @contextmanager
    def session(self) -> Iterator[Session]:
        try:
            with Session(self.engine) as session:
                yield session
                session.commit()
        except OperationalError as error:
            raise ManifestError(f"the manifest at {_safe(self.url)} failed: {_first_line(error)}") from None

    # --- folding what writers recorded --------------------------------------------------------

    def fold(
        self,
        records: Sequence[Mapping[str, Any]],
        artifacts: Sequence[Artifact],
        cursors: Mapping[str, tuple[int, bool]],
    ) -> FoldResult:
        """Apply journal records, newly published artifacts and journal cursors in one transaction.

        Idempotent: a record whose uid is already stored is not applied again, an artifact already
        indexed is left as it is, and ``last_used_at`` only moves forward.
        """
        with self.session() as session:
            uids = [record["uid"] for record in records]
            known: set[str] = set()
            for start in range(0, len(uids), 500):
                chunk = uids[start : start + 500]
                known.update(session.exec(select(EventRow.uid).where(EventRow.uid.in_(chunk))))
            fresh = {r["uid"]: r for r in records if r["uid"] not in known and r.get("kind") != "closed"}
            session.add_all(EventRow(**_event_fields(record)) for record in fresh.values())
            for record in fresh.values():
                if record.get("kind") == "observed" and isinstance(record.get("facts"), dict):
                    _upsert_observation(session, Facts.from_json(record["facts"]), record)
                elif record.get("kind") in (PINNED, UNPINNED) and record.get("key"):
                    _set_pin(session, record)
            indexed = sum(_insert_artifact(session, artifact) for artifact in artifacts)
            for record in records:
                if record.get("kind") == "hit" and record.get("key"):
                    _touch(session, str(record["key"]), float(record["at"]))
            for name, (offset, closed) in cursors.items():
                row = session.get(JournalCursorRow, name) or JournalCursorRow(name=name)
                row.offset, row.closed = offset, closed
                session.add(row)
        return FoldResult(records=len(fresh), artifacts=indexed)

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

    def forget(self, key: str) -> None:
        with self.session() as session:
            row = _artifact_row_for(session, key)
            if row is not None:
                session.delete(row)

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
        with self.session() as session:
            session.add_all(EventRow(**_event_fields(event)) for event in events)

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


@dataclass(frozen=True, slots=True)
class FoldResult:
    records: int  # journal records applied for the first time
    artifacts: int  # artifacts newly indexed


def _artifact_row_for(session: Session, key: str) -> ArtifactRow | None:
    return session.exec(select(ArtifactRow).where(ArtifactRow.key == key)).first()


def _insert_artifact(session: Session, artifact: Artifact) -> bool:
    if _artifact_row_for(session, artifact.key) is not None:
        return False
    session.add(_artifact_row(artifact))
    session.flush()
    return True


def _touch(session: Session, key: str, at: float) -> None:
    row = _artifact_row_for(session, key)
    if row is not None and at > row.last_used_at:
        row.last_used_at = at
        session.add(row)


def _set_pin(session: Session, record: Mapping[str, Any]) -> None:
    # The newest record wins, whatever order the journals are folded in.
    at, pinned = float(record["at"]), record["kind"] == PINNED
    row = session.get(PinRow, str(record["key"]))
    if row is None:
        session.add(PinRow(key=str(record["key"]), pinned=pinned, at=at, host=str(record.get("host", ""))))
        session.flush()
    elif at >= row.at:
        row.pinned, row.at, row.host = pinned, at, str(record.get("host", ""))
        session.add(row)


def _upsert_observation(session: Session, facts: Facts, record: Mapping[str, Any]) -> None:
    environment = environment_facts(facts)
    values = {name: f.thaw(value) for name, value in environment.values().items()}
    digest = hashlib.sha256(canonical_json(values).encode()).hexdigest()
    at, host = float(record["at"]), str(record.get("host", ""))
    row = session.exec(select(ObservationRow).where(ObservationRow.digest == digest)).first()
    if row is None:
        session.add(
            ObservationRow(
                digest=digest, gpu_type=str(environment.value(f.GPU_TYPE, f.NONE)),
                facts=environment.to_json(), host=host, first_seen_at=at, last_seen_at=at,
            )
        )  # fmt: skip
        session.flush()
        return
    if at >= row.last_seen_at:
        row.last_seen_at, row.host = at, host
    row.seen += 1
    session.add(row)


_EVENT_FIELDS = {"uid", "at", "kind", "layer", "key", "model", "seconds", "bytes", "host"}


def _event_fields(event: Mapping[str, Any]) -> dict[str, Any]:
    return {name: event.get(name) for name in _EVENT_FIELDS}


def _artifact_row(artifact: Artifact) -> ArtifactRow:
    data = artifact.to_json()
    data.pop("format")
    return ArtifactRow(**data)


def _artifact(row: ArtifactRow) -> Artifact:
    return Artifact(
        key=row.key, layer=row.layer, model=row.model, relpath=row.relpath, bytes=row.bytes,
        files=row.files, created_at=row.created_at, last_used_at=row.last_used_at,
        builder=row.builder, facts={name: f.freeze(value) for name, value in row.facts.items()},
        depends_on=tuple(row.depends_on or ()), checksum=row.checksum,
    )  # fmt: skip


def _safe(url: str) -> str:
    """The URL with any password hidden, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def _first_line(error: Exception) -> str:
    text = str(getattr(error, "orig", None) or error)
    return text.strip().splitlines()[0] if text.strip() else type(error).__name__
