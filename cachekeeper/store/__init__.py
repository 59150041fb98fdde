"""The cache root on disk: its layout, atomic writes, sidecars, contents and publishing.

An artifact exists when, and only when, its sidecar does: the sidecar is written last, atomically,
and removed first.

Every name below is imported on first use, as in the package above: a warm boot reads its layout
and sidecars and never loads what scans, checksums or publishes an artifact.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .. import lazy_exports

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
__getattr__ = lazy_exports(__name__, _EXPORTS)


if TYPE_CHECKING:  # explicit re-exports, for type checkers
    from .atomic import fsync_directory as fsync_directory
    from .atomic import write_atomically as write_atomically
    from .contents import Contents as Contents
    from .contents import foreign_links as foreign_links
    from .contents import hash_files as hash_files
    from .contents import list_files as list_files
    from .contents import measure as measure
    from .contents import read_checksums as read_checksums
    from .contents import scan_contents as scan_contents
    from .contents import write_checksums as write_checksums
    from .layout import STATE_DIR as STATE_DIR
    from .layout import Root as Root
    from .layout import Roots as Roots
    from .layout import builder_id as builder_id
    from .layout import check_state as check_state
    from .layout import default_root as default_root
    from .publishing import publish as publish
    from .publishing import remove_checksums as remove_checksums
    from .publishing import remove_tree as remove_tree
    from .publishing import unpublish as unpublish
    from .sidecars import DELETING as DELETING
    from .sidecars import PUBLISHED as PUBLISHED
    from .sidecars import SIDECAR_FORMAT as SIDECAR_FORMAT
    from .sidecars import Artifact as Artifact
    from .sidecars import UnreadableSidecar as UnreadableSidecar
    from .sidecars import artifact_parts as artifact_parts
    from .sidecars import artifact_path as artifact_path
    from .sidecars import iter_sidecars as iter_sidecars
    from .sidecars import look_up_sidecar as look_up_sidecar
    from .sidecars import read_sidecar as read_sidecar
