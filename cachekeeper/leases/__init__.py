"""Build leases: at most one process builds a given key at a time, across processes and machines.

Three mechanisms share one interface (``Leases``: ``acquire`` and ``holder``): files in the cache
root (local disks, NFS), entries of a ``modal.Dict`` (containers sharing a Modal Volume, which has
no locking at all), and rows of the manifest's ``lease`` table (a server database).
"""

from __future__ import annotations

from ..liveness import Witness
from ..manifest import Manifest
from ..store import Root
from .database import DbLeases, dead_db_leases
from .generations import DeadLeases, DictStore, FileLeases, ModalDictLeases, dead_file_leases, forget_lease
from .lease import DEFAULT_TTL, STALE_AFTER, Lease, LeaseInfo, Leases

__all__ = [
    "DEFAULT_TTL",
    "STALE_AFTER",
    "DbLeases",
    "DeadLeases",
    "DictStore",
    "FileLeases",
    "Lease",
    "LeaseInfo",
    "Leases",
    "ModalDictLeases",
    "dead_db_leases",
    "dead_file_leases",
    "forget_lease",
    "leases_for",
]


def leases_for(
    root: Root, manifest: Manifest | None = None, ttl: float = DEFAULT_TTL, witness: Witness | None = None
) -> Leases:
    """The mechanism that builders of ``root`` use by default: the manifest's table when the
    manifest is a server database, files in the root otherwise. ``witness`` judges whether a
    holder is still live (default: this process's memory, for a boot that waits)."""
    if manifest is not None and manifest.is_server:
        return DbLeases(manifest, ttl, witness)
    return FileLeases(root, ttl, witness)
