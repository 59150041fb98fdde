"""Uses of artifacts by servers on roots they cannot write, as rows of a server manifest.

A server that mounts its cache read-only (Modal's ``Volume.read_only()``) cannot leave a use file in
the root (uses.py). With a server manifest it leaves a row in the ``served`` table instead, renewed
while it lives (runtime/served.py); prune keeps what a live row names, as it keeps what a live use
file names. Liveness is judged as for use files, by the observer's clock: a row its holder stopped
renewing is dead once it has not changed for ``USE_TTL`` of the observer's time.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..liveness import Witness
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


def judged(database: Database, witness: Witness) -> list[tuple[str, str, str, str, bool]]:
    """Every row as (token, layer, key, owner, live): live unless unchanged for ``USE_TTL`` of the
    observer's time (``witness``), as a use file is judged; the expiry its holder keeps moving is
    compared with nothing, only watched for change. Nothing on SQLite, where no server writes rows."""
    from ..uses import USE_TTL

    if not database.is_server:
        return []
    rows = database.rows("SELECT token, layer, key, owner, expires_at FROM served ORDER BY layer, key, owner", {})
    ages = witness.ages({f"served/{token}": str(expires_at) for token, *_, expires_at in rows}, scope="served/")
    return [
        (str(t), str(layer), str(key), str(owner), ages[f"served/{t}"] < USE_TTL) for t, layer, key, owner, _ in rows
    ]


def live(database: Database, witness: Witness) -> dict[tuple[str, str], list[str]]:
    """(layer, key) → owners of every live row."""
    found: dict[tuple[str, str], list[str]] = {}
    for _, layer, key, owner, alive in judged(database, witness):
        if alive:
            found.setdefault((layer, key), []).append(owner)
    return found


def users(database: Database, key: str, witness: Witness) -> list[str]:
    """The owners of live rows naming ``key``."""
    return [owner for (_, named), owners in live(database, witness).items() if named == key for owner in owners]


def dead(database: Database, witness: Witness) -> list[str]:
    """The tokens of rows whose server stopped without removing them."""
    return [token for token, *_, alive in judged(database, witness) if not alive]
