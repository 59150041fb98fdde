"""The cache root on disk: its layout, atomic writes, sidecars, contents and publishing.

An artifact exists when, and only when, its sidecar does: the sidecar is written last, atomically,
and removed first.

Every name below is imported on first use, as in the package above: a warm boot reads its layout
and sidecars and never loads what scans, checksums or publishes an artifact.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

# Public name → the module of this package that defines it.
_EXPORTS = {
    "fsync_directory": "atomic",
    "write_atomically": "atomic",
    "Contents": "contents",
    "foreign_links": "contents",
    "hash_files": "contents",
    "list_files": "contents",
    "measure": "contents",
    "read_checksums": "contents",
    "scan_contents": "contents",
    "write_checksums": "contents",
    "STATE_DIR": "layout",
    "Root": "layout",
    "Roots": "layout",
    "builder_id": "layout",
    "check_state": "layout",
    "default_root": "layout",
    "publish": "publishing",
    "remove_checksums": "publishing",
    "remove_tree": "publishing",
    "unpublish": "publishing",
    "DELETING": "sidecars",
    "PUBLISHED": "sidecars",
    "SIDECAR_FORMAT": "sidecars",
    "Artifact": "sidecars",
    "UnreadableSidecar": "sidecars",
    "artifact_parts": "sidecars",
    "artifact_path": "sidecars",
    "iter_sidecars": "sidecars",
    "look_up_sidecar": "sidecars",
    "read_sidecar": "sidecars",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if TYPE_CHECKING:
    from .atomic import fsync_directory, write_atomically
    from .contents import (
        Contents,
        foreign_links,
        hash_files,
        list_files,
        measure,
        read_checksums,
        scan_contents,
        write_checksums,
    )
    from .layout import STATE_DIR, Root, Roots, builder_id, check_state, default_root
    from .publishing import publish, remove_checksums, remove_tree, unpublish
    from .sidecars import (
        DELETING,
        PUBLISHED,
        SIDECAR_FORMAT,
        Artifact,
        UnreadableSidecar,
        artifact_parts,
        artifact_path,
        iter_sidecars,
        look_up_sidecar,
        read_sidecar,
    )
