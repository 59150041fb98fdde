"""Build leases: at most one process builds a given key at a time, across processes and machines.

Three mechanisms share one interface (``Leases``: ``acquire`` and ``holder``): files in the cache
root (local disks, NFS), entries of a ``modal.Dict`` (containers sharing a Modal Volume, which has
no locking at all), and rows of the manifest's ``lease`` table (a server database).
"""

from __future__ import annotations

from ..manifest import Manifest
from ..store import Root
from .database import DbLeases
from .generations import DictStore, FileLeases, ModalDictLeases, dead_file_leases, lease_temporary_files
from .lease import DEFAULT_TTL, STALE_AFTER, Lease, LeaseInfo, Leases

__all__ = [
    "DEFAULT_TTL",
    "STALE_AFTER",
    "DbLeases",
    "DictStore",
    "FileLeases",
    "Lease",
    "LeaseInfo",
    "Leases",
    "ModalDictLeases",
    "dead_file_leases",
    "lease_temporary_files",
    "leases_for",
]


def leases_for(root: Root, manifest: Manifest | None = None, ttl: float = DEFAULT_TTL) -> Leases:
    """The mechanism that builders of ``root`` use by default: the manifest's table when the
    manifest is a server database, files in the root otherwise."""
    if manifest is not None and manifest.is_server:
        return DbLeases(manifest, ttl)
    return FileLeases(root, ttl)
