"""The manifest's tables, and the statements that write them, through sqlmodel and SQLAlchemy.

Only writing and migrating load this module: reads are plain SQL in manifest.py, so that
``cachekeeper check`` starts without importing SQLAlchemy. On PostgreSQL many processes write at
once, so every write that can race is one statement whose outcome the database decides (a unique
constraint, ON CONFLICT, a conditional UPDATE), never a read followed by a write decided here.
Rows written in key order make concurrent folds wait for each other rather than deadlock.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, UniqueConstraint, case, delete, or_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Field, Session, SQLModel

from .journal import PINNED
from .store import DELETING, PUBLISHED, Artifact


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


def insert(session: Session, table: Any) -> Any:
    """An INSERT that can say ON CONFLICT, in the session's SQL dialect."""
    return (postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert)(table)


def insert_artifact(session: Session, artifact: Artifact) -> bool:
    table = ArtifactRow.__table__
    data = artifact.to_json()
    data.pop("format")
    # Rebuilt after a prune was killed half way through removing it: this is a new artifact.
    stale = (table.c.key == artifact.key, table.c.state == DELETING, table.c.created_at != artifact.created_at)
    session.exec(delete(table).where(*stale))
    statement = insert(session, table).values(**data, state=PUBLISHED)
    statement = statement.on_conflict_do_nothing(index_elements=["key"]).returning(table.c.id)
    return session.exec(statement).first() is not None


def insert_new_events(session: Session, records: Sequence[Mapping[str, Any]]) -> list[str]:
    """Store the records whose uid is not stored yet; the uids this call stored."""
    table = EventRow.__table__
    stored: list[str] = []
    for start in range(0, len(records), 500):
        rows = [event_fields(record) for record in records[start : start + 500]]
        statement = insert(session, table).values(rows).on_conflict_do_nothing(index_elements=["uid"])
        stored.extend(session.exec(statement.returning(table.c.uid)).scalars())
    return stored


def touch(session: Session, key: str, at: float) -> None:
    table = ArtifactRow.__table__
    session.exec(update(table).where(table.c.key == key, table.c.last_used_at < at).values(last_used_at=at))


def set_pin(session: Session, record: Mapping[str, Any]) -> None:
    """The newest pin or unpin wins, whatever order journals are folded in and by whom."""
    table = PinRow.__table__
    values = {"key": str(record["key"]), "pinned": record["kind"] == PINNED, "at": float(record["at"]),
              "host": str(record.get("host", ""))}  # fmt: skip
    session.exec(insert(session, table).values(**values).on_conflict_do_nothing(index_elements=["key"]))
    session.exec(update(table).where(table.c.key == values["key"], table.c.at < values["at"]).values(**values))


def upsert_observation(session: Session, values: Mapping[str, Any]) -> None:
    """One more sighting of a fingerprint: the newest sighting names the host."""
    table = ObservationRow.__table__
    statement = insert(session, table).values(**values)
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


def advance_cursor(session: Session, name: str, offset: int, closed: bool) -> None:
    """A journal's cursor only moves forward, so a slower concurrent sync never rewinds it."""
    table = JournalCursorRow.__table__
    statement = insert(session, table).values(name=name, offset=offset, closed=closed)
    theirs = statement.excluded
    statement = statement.on_conflict_do_update(
        index_elements=["name"],
        set_={
            "offset": case((theirs.offset > table.c.offset, theirs.offset), else_=table.c.offset),
            "closed": or_(table.c.closed, theirs.closed),
        },
    )
    session.exec(statement)


EVENT_FIELDS = {"uid", "at", "kind", "layer", "key", "model", "seconds", "bytes", "host"}


def event_fields(event: Mapping[str, Any]) -> dict[str, Any]:
    return {name: event.get(name) for name in EVENT_FIELDS}
