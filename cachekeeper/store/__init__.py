"""The cache root on disk: its layout, atomic writes, sidecars, contents and publishing.

An artifact exists when, and only when, its sidecar does: the sidecar is written last, atomically,
and removed first.
"""

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

__all__ = [
    "DELETING",
    "PUBLISHED",
    "SIDECAR_FORMAT",
    "STATE_DIR",
    "Artifact",
    "Contents",
    "Root",
    "Roots",
    "UnreadableSidecar",
    "artifact_parts",
    "artifact_path",
    "builder_id",
    "check_state",
    "default_root",
    "foreign_links",
    "fsync_directory",
    "hash_files",
    "iter_sidecars",
    "list_files",
    "look_up_sidecar",
    "measure",
    "publish",
    "read_checksums",
    "read_sidecar",
    "remove_checksums",
    "remove_tree",
    "scan_contents",
    "unpublish",
    "write_atomically",
    "write_checksums",
]
