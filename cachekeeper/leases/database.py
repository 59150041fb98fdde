"""Leases as rows of the manifest's ``lease`` table, when the manifest is a server database."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from ..liveness import Memory, Witness
from ..manifest import Manifest
from ..processes import this_process
from ..store import builder_id
from ..values import Value
from .lease import DEFAULT_TTL, STALE_AFTER, Lease, LeaseInfo, judge


class DbLeases:
    """Leases as rows of the manifest's ``lease`` table, one per key.

    A server database gives what files and Dicts lack, a conditional update: a dead lease is
    taken over by ``UPDATE ... WHERE token = <the dead holder's token>``, which exactly one
    process can win on SQLite and on PostgreSQL alike. Whether a row is dead is judged by the
    reader's own clock (``lease.judge``); a released lease is a deleted row.
    """

    def __init__(self, manifest: Manifest, ttl: float = DEFAULT_TTL, witness: Witness | None = None) -> None:
        self.manifest = manifest
        self.ttl = ttl
        self.witness: Witness = Memory() if witness is None else witness

    def holder(self, layer: str, key: str) -> LeaseInfo | None:
        info = _row_lease(self.manifest, layer, key)
        return info if info is not None and self.judge(layer, key, info)[0] else None

    def acquire(self, layer: str, key: str) -> Lease | None:
        mine = LeaseInfo(builder_id(), uuid.uuid4().hex, time.time() + self.ttl, str(this_process()), self.ttl)
        for _ in range(8):  # each turn follows a change by another process; a few always suffice
            current = _row_lease(self.manifest, layer, key)
            if current is None:
                taken = self.manifest.insert_lease(layer, key, _row(mine))
            elif self.judge(layer, key, current)[0]:
                return None
            else:
                taken = self.manifest.replace_lease(layer, key, current.token, _row(mine))
            if taken:
                return Lease(f"{layer}/{key}", mine, self.ttl, _DbKeeper(self.manifest, layer, key), previous=current)
        return None

    def judge(self, layer: str, key: str, info: LeaseInfo) -> tuple[bool, float]:
        """(whether the lease row ``info`` may be live, how long it has been as it is)."""
        scope = f"lease db/{layer}/{key}/"
        return judge(info, scope + "top", scope, self.witness, self.ttl)


class _DbKeeper(Value):
    manifest: Manifest
    layer: str
    key: str

    def holds(self, info: LeaseInfo) -> bool:
        current = _row_lease(self.manifest, self.layer, self.key)
        return current is not None and current.token == info.token

    def renew(self, info: LeaseInfo, renewed: LeaseInfo) -> bool:
        return self.manifest.replace_lease(self.layer, self.key, info.token, _row(renewed))

    def release(self, info: LeaseInfo) -> None:
        self.manifest.drop_lease(self.layer, self.key, info.token)


def _row(info: LeaseInfo) -> dict[str, Any]:
    """The columns of a lease row: every renewal changes ``expires_at``, and so the row."""
    return {"owner": info.owner, "token": info.token, "expires_at": info.expires_at, "process": info.process}


def _row_lease(manifest: Manifest, layer: str, key: str) -> LeaseInfo | None:
    fields = manifest.lease(layer, key)
    return None if fields is None else LeaseInfo(**fields)


def dead_db_leases(
    manifest: Manifest, published: Callable[[str, str], bool], witness: Witness, ttl: float = DEFAULT_TTL
) -> list[tuple[str, str, str]]:
    """(layer, key, token) of the lease rows that are dead by the observer's clock (``witness``) and
    whose key is published, or that have been dead for STALE_AFTER: until then a dead row tells the
    next builder whom to prove gone before it clears what was left. Drop a row by its token
    (``Manifest.drop_lease``): one taken over meanwhile stays."""
    leases = DbLeases(manifest, ttl, witness)
    dead = []
    for fields in manifest.leases():
        layer, key = str(fields.pop("layer")), str(fields.pop("key"))
        info = LeaseInfo(**fields)
        live, dead_for = leases.judge(layer, key, info)
        if not live and (published(layer, key) or dead_for >= STALE_AFTER):
            dead.append((layer, key, info.token))
    witness.forget_unseen("lease db/")
    return dead
