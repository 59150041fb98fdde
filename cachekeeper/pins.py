"""Pins: keys that no prune removes, whatever its policy, until they are unpinned."""

from __future__ import annotations

from .errors import UnknownKeyError
from .hub import hub_revisions
from .journal import Journal
from .keys import parse_key
from .manifest import Manifest
from .records import Kind, Record
from .store import Artifact, Roots, builder_id, read_sidecar
from .sync import sync


def set_pinned(manifest: Manifest, roots: Roots, key: str, *, pinned: bool) -> Artifact:
    """Pin or unpin ``key``: journaled like everything else, so that doctor can rebuild the pins,
    then folded into the manifest at once."""
    layer, _ = parse_key(key)
    artifact = (
        manifest.artifact(key)
        or read_sidecar(roots.for_layer(layer), layer, key)
        or next((a for a in hub_revisions(roots) if a.key == key), None)
    )
    if artifact is None:
        raise UnknownKeyError(f"no artifact {key}: `cachekeeper ls` and `cachekeeper weights` list what there is")
    writer = Journal(roots.main)
    kind = Kind.PINNED if pinned else Kind.UNPINNED
    writer.append(Record.new(kind, key=key, layer=layer, model=artifact.model, host=builder_id()))
    writer.close()
    sync(manifest, roots)
    return artifact
