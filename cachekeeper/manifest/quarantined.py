"""Strikes and quarantined artifacts in the manifest: folded from records, read back as plain
values (strikes.py and quarantine.py, further down, make them into theirs).

Every write is one statement whose outcome the database decides (a primary key, a unique name), so
that folding the same records twice, or by two processes at once, changes nothing more.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..records import Kind, Record
from ..store import PUBLISHED

if TYPE_CHECKING:
    from sqlmodel import Session

    from .connection import Database


def apply(database: Database, records: Sequence[Record], entries: Mapping[tuple[str, str], Mapping[str, Any]]) -> None:
    """Apply strike and quarantine records, in their order. ``entries`` holds the quarantine
    records still in the root (as quarantine.Quarantined.to_json() writes them), by (layer, name):
    a quarantine whose record is gone (restored or removed since) is not listed again."""
    from sqlalchemy import delete

    from .tables import ARTIFACT, QUARANTINED, STRIKE
    from .writes import _insert

    with database.session() as session:
        for record in records:
            if record.kind is Kind.STRIKE and record.layer and record.key:
                values = {
                    "uid": record.uid,
                    "layer": record.layer,
                    "key": record.key,
                    "at": record.at,
                    "reason": record.reason or "",
                    "host": record.host or "",
                    "cleared": False,
                }
                statement = _insert(session, STRIKE).values(**values).on_conflict_do_nothing(index_elements=["uid"])
                session.exec(statement)
            elif record.kind is Kind.STRIKE_CLEARED and record.ref and record.layer and record.key:
                # Folded before its strike, maybe (two writers' journals): the strike, when it
                # comes, finds it cleared already.
                _clear(session, [record.ref], record.layer, record.key, record.at, record.host or "")
            elif record.kind is Kind.QUARANTINED and record.layer and record.ref:
                entry = entries.get((record.layer, record.ref))
                if entry is None:
                    continue
                artifact = entry.get("artifact")
                values = {
                    "layer": entry["layer"],
                    "key": entry["key"],
                    "model": str(artifact.get("model", "none")) if artifact else "none",
                    "name": entry["name"],
                    "at": entry["at"],
                    "host": entry["host"],
                    "reasons": list(entry["reasons"]),
                    "artifact": artifact,
                }
                statement = _insert(session, QUARANTINED).values(**values)
                session.exec(statement.on_conflict_do_nothing(index_elements=["layer", "name"]))
                _clear(session, entry["strikes"], entry["layer"], entry["key"], entry["at"], entry["host"])
                if artifact:  # its row, not a newer artifact's published since
                    session.exec(
                        delete(ARTIFACT).where(
                            ARTIFACT.c.key == entry["key"],
                            ARTIFACT.c.state == PUBLISHED,
                            ARTIFACT.c.created_at == artifact["created_at"],
                        )
                    )
            elif record.kind in (Kind.UNQUARANTINED, Kind.PRUNED) and record.layer and record.ref:
                session.exec(
                    delete(QUARANTINED).where(QUARANTINED.c.layer == record.layer, QUARANTINED.c.name == record.ref)
                )


def _clear(session: Session, uids: Sequence[str], layer: str, key: str, at: float, host: str) -> None:
    from .tables import STRIKE
    from .writes import _insert

    for uid in uids:
        values = {"uid": uid, "layer": layer, "key": key, "at": at, "reason": "", "host": host, "cleared": True}
        statement = _insert(session, STRIKE).values(**values)
        session.exec(statement.on_conflict_do_update(index_elements=["uid"], set_={"cleared": True}))


def open_strikes(database: Database, layer: str, key: str) -> list[tuple[str, float, str, str]]:
    """(uid, at, reason, host) of each strike of ``key`` no later boot cleared: those read-only
    servers left in the manifest (they write no file)."""
    found = database.rows(
        "SELECT uid, at, reason, host FROM strike WHERE layer = :layer AND key = :key AND NOT cleared",
        {"layer": layer, "key": key},
    )
    return [(str(uid), float(at), str(reason), str(host)) for uid, at, reason, host in found]


def quarantined(
    database: Database, *, key: str | None = None, layer: str | None = None, model: str | None = None
) -> list[dict[str, Any]]:
    """The quarantined artifacts the manifest lists, newest first: each row's fields, as the
    record in the root holds them (its strikes' uids and canary aside)."""
    where, params = [], {}
    for column, value in (("key", key), ("layer", layer), ("model", model)):
        if value is not None:
            where.append(f"{column} = :{column}")
            params[column] = value
    query = "SELECT key, layer, name, at, host, reasons, artifact FROM quarantined"
    query += (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY at DESC, name"
    return [
        {
            "key": row_key,
            "layer": row_layer,
            "name": name,
            "at": at,
            "host": host,
            "reasons": _json(reasons) or [],
            "strikes": [],
            "artifact": _json(artifact),
            "format": 1,
        }
        for row_key, row_layer, name, at, host, reasons, artifact in database.rows(query, params)
    ]


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, (str, bytes)) else value
