"""Uses of artifacts by servers on roots they cannot write, as rows of a server manifest.

A server that mounts its cache read-only (Modal's ``Volume.read_only()``) cannot leave a use file in
the root (uses.py). With a server manifest it leaves a row in the ``served`` table instead, renewed
while it lives (runtime/served.py); prune keeps what a live row names, as it keeps what a live use
file names. Liveness is judged as for use files: the row's expiry, which its holder keeps moving.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .connection import Database


def add(database: Database, token: str, layer: str, key: str, owner: str, expires_at: float) -> None:
    from .tables import SERVED
    from .writes import _insert

    values = {
        "token": token,
        "layer": layer,
        "key": key,
        "owner": owner,
        "since": time.time(),
        "expires_at": expires_at,
    }
    with database.session() as session:
        session.exec(_insert(session, SERVED).values(**values).on_conflict_do_nothing(index_elements=["token"]))


def renew(database: Database, tokens: Sequence[str], expires_at: float) -> None:
    from sqlalchemy import update

    from .tables import SERVED

    if tokens:
        with database.session() as session:
            session.exec(update(SERVED).where(SERVED.c.token.in_(list(tokens))).values(expires_at=expires_at))


def drop(database: Database, tokens: Sequence[str]) -> None:
    from sqlalchemy import delete

    from .tables import SERVED

    if tokens:
        with database.session() as session:
            session.exec(delete(SERVED).where(SERVED.c.token.in_(list(tokens))))


def live(database: Database, now: float | None = None) -> dict[tuple[str, str], list[str]]:
    """(layer, key) → owners of every live row; nothing on SQLite, where no server writes rows."""
    if not database.is_server:
        return {}
    found: dict[tuple[str, str], list[str]] = {}
    query = "SELECT layer, key, owner FROM served WHERE expires_at > :now ORDER BY layer, key, owner"
    for layer, key, owner in database.rows(query, {"now": time.time() if now is None else now}):
        found.setdefault((str(layer), str(key)), []).append(str(owner))
    return found


def users(database: Database, key: str, now: float | None = None) -> list[str]:
    """The owners of live rows naming ``key``."""
    if not database.is_server:
        return []
    query = "SELECT owner FROM served WHERE key = :key AND expires_at > :now ORDER BY owner"
    return [str(owner) for (owner,) in database.rows(query, {"key": key, "now": time.time() if now is None else now})]
