"""Every write to the manifest, through sqlmodel and SQLAlchemy.

On PostgreSQL many processes write at once, so every write that can race is one statement whose
outcome the database decides (a unique constraint, ON CONFLICT, a conditional UPDATE), never a
read followed by a write decided here. Rows written in key order make concurrent folds wait for
each other rather than deadlock.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from sqlalchemy import case, delete, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session

from .. import facts as f
from ..keys import canonical_json
from ..records import Kind, Record
from ..store import DELETING, PUBLISHED, Artifact
from ..values import Value
from .migration import lock_id
from .queries import DAY, chunks, environment_facts, utc_day
from .tables import ARTIFACT, EVENT, EVENT_SUMMARY, JOURNAL_CURSOR, LEASE, OBSERVATION, PIN, SIGHTING

if TYPE_CHECKING:
    from .connection import Database


# Observations folded together are told apart by a microsecond each, in the folder's clock.
_TIE = 1e-6


def _used_at(at: float, now: float) -> float:
    """When an artifact was used, as a fold records it: the writer's time, but never later than the
    folder's own clock (a hit stamped in the future does not keep an artifact "recently used")."""
    return min(at, now)


class FoldResult(Value):
    records: int  # journal records applied for the first time
    artifacts: int  # artifacts newly indexed


def fold(
    database: Database,
    records: Sequence[Record],
    artifacts: Sequence[Artifact],
    cursors: Mapping[str, tuple[int, bool]],
    *,
    now: float | None = None,
) -> FoldResult:
    """Apply records, newly published artifacts and journal cursors in one transaction.

    Idempotent, also when several processes fold the same journals at once: a record is applied by
    whoever stores its uid first (the unique constraint decides), an artifact already indexed is
    left as it is, ``last_used_at`` and journal cursors only move forward.

    Times that order things are the folder's (``now``, this process's clock), never a timestamp
    another machine wrote: a container whose clock runs days ahead must not make its fingerprint
    "the newest" for days, nor an artifact "used" in the future (see ``_observation_values`` and
    ``_used_at``).
    """
    now = time.time() if now is None else now
    with database.session() as session:
        # A publishing record only tells sync which sidecar to read; a closed one, that a journal ended.
        fresh = {record.uid: record for record in records if record.kind not in (Kind.PUBLISHING, Kind.CLOSED)}
        applied = [fresh[uid] for uid in _insert_new_events(session, [fresh[uid] for uid in sorted(fresh)])]
        seen = [r for r in applied if r.kind is Kind.OBSERVED and r.facts is not None]
        # Folded now, in the order their writers say they were seen (no later than now): the last is newest.
        seen.sort(key=lambda record: (min(record.at, now), record.uid))
        observations = [_observation_values(r, now - (len(seen) - 1 - i) * _TIE) for i, r in enumerate(seen)]
        for values in sorted(observations, key=lambda values: (values["digest"], values["last_seen_at"])):
            _upsert_observation(session, values)
        for record in applied:
            if record.kind in (Kind.PINNED, Kind.UNPINNED) and record.key:
                _set_pin(session, record)
        indexed = sum(_insert_artifact(session, artifact, now) for artifact in sorted(artifacts, key=lambda a: a.key))
        last_hit: dict[str, float] = {}
        for record in records:
            if record.kind is Kind.HIT and record.key:
                at = _used_at(record.at, now)
                last_hit[record.key] = max(at, last_hit.get(record.key, at))
        for key in sorted(last_hit):
            table = ARTIFACT
            at = last_hit[key]
            session.exec(update(table).where(table.c.key == key, table.c.last_used_at < at).values(last_used_at=at))
        for name in sorted(cursors):
            _advance_cursor(session, name, *cursors[name])
    return FoldResult(records=len(applied), artifacts=indexed)


def record_artifact(database: Database, artifact: Artifact) -> bool:
    """Index a published artifact. False when it was already indexed (nothing changes)."""
    with database.session() as session:
        return _insert_artifact(session, artifact, time.time())


def set_state(database: Database, key: str, state: str) -> None:
    table = ARTIFACT
    with database.session() as session:
        session.exec(update(table).where(table.c.key == key).values(state=state))


def set_counts(database: Database, key: str, size: int, files: int) -> None:
    with database.session() as session:
        session.exec(update(ARTIFACT).where(ARTIFACT.c.key == key).values(bytes=size, files=files))


def forget(database: Database, key: str, *, created_at: float | None = None) -> None:
    """Forget an artifact's row. With ``created_at``, only the published row of that very
    publication: not one a prune is removing (``deleting``), nor one published anew since."""
    table = ARTIFACT
    which = [table.c.key == key]
    if created_at is not None:
        which += [table.c.state == PUBLISHED, table.c.created_at == created_at]
    with database.session() as session:  # one statement: a row another process forgot is no error
        session.exec(delete(table).where(*which))


@contextmanager
def claim_removals(database: Database, keys: Sequence[str]) -> Iterator[set[str]]:
    """Mark ``keys`` deleting and hold them while the block removes them; the keys now ours.

    Exactly one process at a time holds a key's claim: another prune removing it, or an artifact
    already gone, leaves it out. The mark is committed before the block runs, so a prune killed
    inside the block leaves ``deleting`` rows; its claims die with its process (PostgreSQL: session
    advisory locks, freed when the connection drops; SQLite: a lock file) and the next prune takes
    the rows over. Forget the rows inside the block.
    """
    if not keys:
        yield set()
        return
    if not database.is_server:
        with database.sqlite_lock():
            yield _mark_deleting(database, keys)
        return
    with database.connection() as connection:
        locks = {key: lock_id(f"remove {key}") for key in sorted(keys)}
        held = [
            key
            for key, lock in locks.items()
            if connection.execute(select(func.pg_try_advisory_lock(lock))).scalar_one()
        ]
        connection.commit()
        try:
            yield _mark_deleting(database, held) if held else set()
        finally:
            for key in held:
                connection.execute(select(func.pg_advisory_unlock(locks[key])))
            connection.commit()


def _mark_deleting(database: Database, keys: Sequence[str]) -> set[str]:
    table = ARTIFACT
    marked: set[str] = set()
    with database.session() as session:
        for chunk in chunks(sorted(keys)):
            statement = (
                update(table)
                .where(table.c.key.in_(chunk), table.c.state.in_((PUBLISHED, DELETING)))
                .values(state=DELETING)
                .returning(table.c.key)
            )
            marked.update(session.exec(statement).scalars())
    return marked


def forget_removed(database: Database, keys: Sequence[str], events: Sequence[Record]) -> None:
    """Forget the rows of removed artifacts and record the events of their removal, at once."""
    table = ARTIFACT
    with database.session() as session:
        for chunk in chunks(sorted(keys)):
            session.exec(delete(table).where(table.c.key.in_(chunk)))
        # Journaled too: a concurrent sync may have stored some of them first.
        _insert_new_events(session, events)


def drop_journal_cursors(database: Database, names: Sequence[str]) -> int:
    """Forget the cursors of journals that are gone (compacted); how many rows."""
    table = JOURNAL_CURSOR
    dropped = 0
    with database.session() as session:
        for chunk in chunks(sorted(names)):
            dropped += int(session.exec(delete(table).where(table.c.name.in_(chunk))).rowcount)
    return dropped


def summarise_events(database: Database, *, before: float) -> int:
    """Count every event older than ``before`` into ``event_summary`` (per UTC day, kind, layer and
    model: how many, bytes, seconds) and delete it; how many events.

    One transaction per day of events: the day's events are deleted and their counts added to the
    summaries together, so a process killed at any point has summarised a day wholly or not at
    all. Concurrent runs never count an event twice: each event is handed back by exactly one
    ``DELETE ... RETURNING`` (on PostgreSQL the second waits for the first's row locks, then finds
    the rows gone), and a summary row is created or added to in one statement.
    """
    table, summary = EVENT, EVENT_SUMMARY
    columns = (table.c.at, table.c.kind, table.c.layer, table.c.model, table.c.bytes, table.c.seconds)
    total = 0
    while True:
        with database.session() as session:
            oldest = session.scalar(select(func.min(table.c.at)).where(table.c.at < before))
            if oldest is None:
                return total
            # Up to the end of the oldest event's day (a time so far out that a day is below the
            # float's precision still makes progress).
            end = min(math.floor(oldest / DAY) * DAY + DAY, before)
            end = end if end > oldest else math.nextafter(oldest, math.inf)
            gone = session.exec(delete(table).where(table.c.at < end).returning(*columns)).all()
            counts: dict[tuple[str, str, str, str], list[float]] = {}
            for at, kind, layer, model, size, seconds in gone:
                group = counts.setdefault((utc_day(at), kind, layer or "", model or ""), [0, 0, 0.0])
                group[0] += 1
                group[1] += size or 0
                group[2] += seconds or 0.0
            for (day, kind, layer, model), (count, size, seconds) in sorted(counts.items()):
                statement = _insert(session, summary).values(
                    day=day, kind=kind, layer=layer, model=model, count=int(count), bytes=int(size), seconds=seconds
                )
                added = statement.excluded
                statement = statement.on_conflict_do_update(
                    index_elements=["day", "kind", "layer", "model"],
                    set_={
                        "count": summary.c.count + added.count,
                        "bytes": summary.c.bytes + added.bytes,
                        "seconds": summary.c.seconds + added.seconds,
                    },
                )
                session.exec(statement)
            total += len(gone)


# --- build leases (leases.DbLeases) ---------------------------------------------------------------


def insert_lease(database: Database, layer: str, key: str, fields: Mapping[str, Any]) -> bool:
    """Create the lease row; False when one exists already (the unique key decides)."""
    table = LEASE
    with database.session() as session:
        statement = _insert(session, table).values(layer=layer, key=key, **fields)
        statement = statement.on_conflict_do_nothing(index_elements=["layer", "key"]).returning(table.c.id)
        return session.exec(statement).first() is not None


def replace_lease(database: Database, layer: str, key: str, token: str, fields: Mapping[str, Any]) -> bool:
    """Overwrite the lease only if it still carries ``token``: one statement, one winner."""
    table = LEASE
    statement = update(table).where(table.c.layer == layer, table.c.key == key, table.c.token == token).values(**fields)
    with database.session() as session:
        return bool(session.exec(statement).rowcount == 1)


def drop_lease(database: Database, layer: str, key: str, token: str) -> None:
    table = LEASE
    with database.session() as session:
        session.exec(delete(table).where(table.c.layer == layer, table.c.key == key, table.c.token == token))


# --- sightings (liveness.Sightings) --------------------------------------------------------------


def record_sightings(
    database: Database, observer: str, seen: Mapping[str, str], now: float, *, forget: Sequence[str] = ()
) -> dict[str, float]:
    """``observer`` sees each thing of ``seen`` (thing → digest) at ``now``, its own clock: when it
    first saw each as it is now. A thing seen with the digest remembered keeps its first sight; a
    new one, or one whose digest changed, is first seen now. ``forget``: things no longer there.

    One statement per chunk, whose outcome the database decides (ON CONFLICT): two commands on one
    host seeing the same thing at once agree on its first sight. Rows in thing order, so that
    concurrent writers wait for each other rather than deadlock.
    """
    table = SIGHTING
    first: dict[str, float] = {}
    with database.session() as session:
        for chunk in chunks(sorted(forget)):
            session.exec(delete(table).where(table.c.observer == observer, table.c.thing.in_(chunk)))
        for chunk in chunks(sorted(seen)):
            rows = [{"observer": observer, "thing": t, "digest": seen[t], "first_seen_at": now} for t in chunk]
            statement = _insert(session, table).values(rows)
            theirs = statement.excluded
            statement = statement.on_conflict_do_update(
                index_elements=["observer", "thing"],
                set_={
                    "digest": theirs.digest,
                    "first_seen_at": case(
                        (table.c.digest == theirs.digest, table.c.first_seen_at), else_=theirs.first_seen_at
                    ),
                },
            ).returning(table.c.thing, table.c.first_seen_at)
            first.update((str(thing), float(at)) for thing, at in session.exec(statement))
    return first


# --- statements ----------------------------------------------------------------------------------


def _insert(session: Session, table: Any) -> Any:
    """An INSERT that can say ON CONFLICT, in the session's SQL dialect."""
    return (postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert)(table)


def _insert_artifact(session: Session, artifact: Artifact, now: float) -> bool:
    table = ARTIFACT
    data = artifact.to_json()
    data.pop("format")
    data["last_used_at"] = _used_at(artifact.last_used_at, now)
    # Rebuilt after a prune was killed half way through removing it: this is a new artifact.
    stale = (table.c.key == artifact.key, table.c.state == DELETING, table.c.created_at != artifact.created_at)
    session.exec(delete(table).where(*stale))
    statement = _insert(session, table).values(**data, state=PUBLISHED)
    statement = statement.on_conflict_do_nothing(index_elements=["key"]).returning(table.c.id)
    return session.exec(statement).first() is not None


_EVENT_COLUMNS = ("uid", "at", "kind", "layer", "key", "model", "seconds", "bytes", "host")


def _insert_new_events(session: Session, records: Sequence[Record]) -> list[str]:
    """Store the records whose uid is not stored yet; the uids this call stored."""
    table = EVENT
    stored: list[str] = []
    for start in range(0, len(records), 500):
        rows = [{name: getattr(record, name) for name in _EVENT_COLUMNS} for record in records[start : start + 500]]
        for row in rows:
            row["kind"] = str(row["kind"])
        statement = _insert(session, table).values(rows).on_conflict_do_nothing(index_elements=["uid"])
        stored.extend(session.exec(statement.returning(table.c.uid)).scalars())
    return stored


def _set_pin(session: Session, record: Record) -> None:
    """The newest pin or unpin wins, whatever order journals are folded in and by whom."""
    table = PIN
    values = {"key": str(record.key), "pinned": record.kind is Kind.PINNED, "at": record.at, "host": record.host or ""}
    session.exec(_insert(session, table).values(**values).on_conflict_do_nothing(index_elements=["key"]))
    session.exec(update(table).where(table.c.key == values["key"], table.c.at < values["at"]).values(**values))


def _observation_values(record: Record, folded_at: float) -> dict[str, Any]:
    """The row of one observation. Its times are when it was folded, by the folder's clock: the
    newest observation is the one folded last, whatever the clock of the machine that made it said
    (one stamped 30 days ahead would otherwise stay "the newest" for 30 days)."""
    assert record.facts is not None
    environment = environment_facts(record.facts)
    values = {name: f.thaw(value) for name, value in environment.values().items()}
    return {
        "digest": hashlib.sha256(canonical_json(values).encode()).hexdigest(),
        "gpu_type": str(environment.value(f.GPU_TYPE, f.NONE)),
        "facts": environment.to_json(),
        "host": record.host or "",
        "first_seen_at": folded_at,
        "last_seen_at": folded_at,
        "seen": 1,
    }


def _upsert_observation(session: Session, values: Mapping[str, Any]) -> None:
    """One more sighting of a fingerprint: the newest sighting names the host."""
    table = OBSERVATION
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
    table = JOURNAL_CURSOR
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
