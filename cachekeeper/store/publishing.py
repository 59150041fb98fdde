"""Publishing: the sidecar written last makes an artifact exist; removed first, it stops existing."""

from __future__ import annotations

import json

from . import descriptors
from .atomic import fsync_directory, write_atomically
from .contents import Contents, write_checksums
from .layout import Root
from .sidecars import Artifact, read_sidecar


def publish(root: Root, artifact: Artifact, contents: Contents | None = None) -> bool:
    """Write the sidecar that makes ``artifact`` exist. False when another writer published first.

    The first publisher wins, and a crash leaves no partial sidecar (see ``write_atomically``).
    ``contents`` (whose checksum must be ``artifact.checksum``) is written before the sidecar, so
    a published artifact always has its checksums.
    """
    if contents is None:
        return _write_sidecar(root, artifact)
    write_checksums(root, artifact, contents)
    published = False
    try:
        published = _write_sidecar(root, artifact)
    finally:  # lost the race, or failed (a full disk): no checksums without their sidecar
        if not published:
            winner = read_sidecar(root, artifact.layer, artifact.key)
            if winner is None or winner.checksum != artifact.checksum:
                root.checksums_path(artifact.layer, artifact.key, contents.checksum).unlink(missing_ok=True)
    return published


def _write_sidecar(root: Root, artifact: Artifact) -> bool:
    data = json.dumps(artifact.to_json(), indent=1, sort_keys=True).encode()
    return write_atomically(root.sidecar_path(artifact.layer, artifact.key), data, exclusive=True)


def unpublish(root: Root, layer: str, key: str, *, durable: bool = True) -> bool:
    """Remove the sidecar, so that no later boot trusts the artifact. False if it was gone.

    ``durable=False`` leaves the directory's fsync to the caller, who removes many at once and must
    call ``fsync_directory`` before touching any of their files.
    """
    try:
        root.sidecar_path(layer, key).unlink()
    except FileNotFoundError:
        return False
    if durable:
        fsync_directory(root.sidecar_path(layer, key).parent)
    return True


def remove_checksums(root: Root, artifact: Artifact) -> None:
    if artifact.checksum is not None:
        root.checksums_path(artifact.layer, artifact.key, artifact.checksum).unlink(missing_ok=True)


def remove_tree(root: Root, parts: tuple[str, ...]) -> bool:
    """Delete ``root/parts...`` (an artifact's directory) by descriptor: a link on the way is
    refused, the entry itself if a link is removed as one. False if it was not there."""
    return descriptors.remove(root.path, parts)
