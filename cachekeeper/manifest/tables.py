"""The manifest's tables, as sqlmodel rows: what the alembic revisions create, and writes use.

Only writing and migrating load this module (queries.py reads with plain SQL), and rows never
leave the manifest package: callers get the frozen values of store, facts and records.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, BigInteger, Column, UniqueConstraint
from sqlmodel import Field, SQLModel

from ..store import PUBLISHED


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


class SightingRow(SQLModel, table=True):
    """When ``observer`` first saw ``thing`` as it is now (``digest``), by the observer's own clock."""

    __tablename__ = "sighting"

    observer: str = Field(primary_key=True)
    thing: str = Field(primary_key=True)
    digest: str
    first_seen_at: float


class EventSummaryRow(SQLModel, table=True):
    """Events older than the retention window, counted per day, kind, layer and model."""

    __tablename__ = "event_summary"
    __table_args__ = (UniqueConstraint("day", "kind", "layer", "model", name="uq_event_summary"),)

    id: int | None = Field(default=None, primary_key=True)
    day: str
    kind: str
    layer: str
    model: str
    count: int
    bytes: int = Field(sa_type=BigInteger)
    seconds: float


# The Core tables that writes use: sqlmodel's classes carry them, but their types do not say so.
ARTIFACT = SQLModel.metadata.tables["artifact"]
PIN = SQLModel.metadata.tables["pin"]
OBSERVATION = SQLModel.metadata.tables["observation"]
EVENT = SQLModel.metadata.tables["event"]
JOURNAL_CURSOR = SQLModel.metadata.tables["journal_cursor"]
LEASE = SQLModel.metadata.tables["lease"]
SIGHTING = SQLModel.metadata.tables["sighting"]
EVENT_SUMMARY = SQLModel.metadata.tables["event_summary"]


class StrikeRow(SQLModel, table=True):
    """A boot that hit an artifact and failed (strikes.py); ``cleared`` once a later boot succeeded
    on it, or it was quarantined."""

    __tablename__ = "strike"

    uid: str = Field(primary_key=True)
    layer: str
    key: str = Field(index=True)
    at: float
    reason: str
    host: str
    cleared: bool = False


class QuarantinedRow(SQLModel, table=True):
    """An artifact moved out of its key's way (quarantine.py), as its record in the root says."""

    __tablename__ = "quarantined"
    __table_args__ = (UniqueConstraint("layer", "name", name="uq_quarantined_layer_name"),)

    id: int | None = Field(default=None, primary_key=True)
    layer: str
    key: str = Field(index=True)
    model: str
    name: str
    at: float
    host: str
    reasons: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    artifact: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))


class ServedRow(SQLModel, table=True):
    """A process serving an artifact from a root it cannot write (a read-only Volume mount): its use,
    renewed while it lives, which prune honours like a use file (runtime/served.py)."""

    __tablename__ = "served"

    token: str = Field(primary_key=True)
    layer: str
    key: str = Field(index=True)
    owner: str
    since: float
    expires_at: float = Field(index=True)


STRIKE = SQLModel.metadata.tables["strike"]
QUARANTINED = SQLModel.metadata.tables["quarantined"]
SERVED = SQLModel.metadata.tables["served"]
