"""Leases as rows of the manifest's ``lease`` table, when the manifest is a server database."""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass

from ..manifest import Manifest
from ..processes import this_process
from ..store import builder_id
from .lease import DEFAULT_TTL, Lease, LeaseInfo


class DbLeases:
    """Leases as rows of the manifest's ``lease`` table, one per key.

    A server database gives what files and Dicts lack, a conditional update: a dead lease is
    taken over by ``UPDATE ... WHERE token = <the dead holder's token>``, which exactly one
    process can win on SQLite and on PostgreSQL alike.
    """

    def __init__(self, manifest: Manifest, ttl: float = DEFAULT_TTL) -> None:
        self.manifest = manifest
        self.ttl = ttl

    def holder(self, layer: str, key: str) -> LeaseInfo | None:
        info = _row_lease(self.manifest, layer, key)
        return info if info is not None and info.alive(time.time()) else None

    def acquire(self, layer: str, key: str) -> Lease | None:
        mine = LeaseInfo(builder_id(), uuid.uuid4().hex, time.time() + self.ttl, this_process())
        for _ in range(8):  # each turn follows a change by another process; a few always suffice
            current = _row_lease(self.manifest, layer, key)
            if current is None:
                taken = self.manifest.insert_lease(layer, key, asdict(mine))
            elif current.alive(time.time()):
                return None
            else:
                taken = self.manifest.replace_lease(layer, key, current.token, asdict(mine))
            if taken:
                return Lease(f"{layer}/{key}", mine, self.ttl, _DbKeeper(self.manifest, layer, key))
        return None


@dataclass(frozen=True, slots=True)
class _DbKeeper:
    manifest: Manifest
    layer: str
    key: str

    def holds(self, info: LeaseInfo) -> bool:
        current = _row_lease(self.manifest, self.layer, self.key)
        return current is not None and current.token == info.token

    def renew(self, info: LeaseInfo, renewed: LeaseInfo) -> bool:
        return self.manifest.replace_lease(self.layer, self.key, info.token, asdict(renewed))

    def release(self, info: LeaseInfo) -> None:
        self.manifest.drop_lease(self.layer, self.key, info.token)


def _row_lease(manifest: Manifest, layer: str, key: str) -> LeaseInfo | None:
    fields = manifest.lease(layer, key)
    return None if fields is None else LeaseInfo(**fields)
