"""``prune``: plan which artifacts to delete, then delete them without ever leaving a lie behind.

Each removal goes: claim the manifest row and mark it ``deleting`` (one prune per artifact, also
across machines sharing a PostgreSQL manifest) → remove the sidecar (no boot trusts the
artifact from here on) → remove the files → forget the row. A prune killed at any step leaves
a row marked ``deleting`` that the next prune finishes, and never a sidecar without its files.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from .errors import CachekeeperError
from .layers import WEIGHTS
from .leases import FileLeases
from .manifest import DELETING, PUBLISHED, Manifest
from .store import Artifact, Root, Roots, builder_id, remove_tree, unpublish


@dataclass(frozen=True, slots=True)
class PrunePlan:
    removals: tuple[Artifact, ...]

    @property
    def bytes(self) -> int:
        return sum(artifact.bytes for artifact in self.removals)


@dataclass(frozen=True, slots=True)
class PruneResult:
    removed: tuple[Artifact, ...]
    skipped: tuple[tuple[Artifact, str], ...]  # (artifact, why it was kept)

    @property
    def bytes(self) -> int:
        return sum(artifact.bytes for artifact in self.removed)


def plan_prune(manifest: Manifest, *, older_than: float, now: float | None = None) -> PrunePlan:
    """Artifacts not used for ``older_than`` seconds, and any a killed prune left half removed."""
    cutoff = (time.time() if now is None else now) - older_than
    unfinished = manifest.artifacts(state=DELETING)
    unused = [a for a in manifest.artifacts(state=PUBLISHED) if a.last_used_at < cutoff]
    return PrunePlan(tuple(unfinished + unused))


def execute_prune(plan: PrunePlan, manifest: Manifest, roots: Roots) -> PruneResult:
    removed, skipped = [], []
    for artifact in plan.removals:
        root = roots.for_layer(artifact.layer)
        if FileLeases(root).holder(artifact.layer, artifact.key) is not None:
            skipped.append((artifact, "a process holds its lease"))
            continue
        try:
            root.inside(artifact.relpath)  # refuse before changing anything
            with manifest.claim_removal(artifact.key) as claimed:
                if claimed:
                    unpublish(root, artifact.layer, artifact.key)
                    _remove_files(root, artifact)
                    manifest.forget(artifact.key)
        except CachekeeperError as error:
            skipped.append((artifact, str(error)))
            continue
        if not claimed:
            skipped.append((artifact, "another prune removed it or is removing it"))
            continue
        manifest.record_events(
            [
                {
                    "uid": uuid.uuid4().hex, "at": time.time(), "kind": "pruned", "layer": artifact.layer,
                    "key": artifact.key, "model": artifact.model, "bytes": artifact.bytes, "host": builder_id(),
                }  # fmt: skip
            ]
        )
        removed.append(artifact)
    return PruneResult(tuple(removed), tuple(skipped))


def _remove_files(root: Root, artifact: Artifact) -> None:
    if artifact.layer != WEIGHTS:
        remove_tree(root, artifact.relpath)
        return
    # The Hub cache shares blobs between revisions and keeps refs: let huggingface_hub decide
    # what a revision owns. Its strategy deletes snapshots, then refs, then blobs.
    from huggingface_hub import scan_cache_dir

    sha = artifact.relpath.rstrip("/").rsplit("/", 1)[-1]
    weights_dir = root.layer_dir(WEIGHTS)
    if not weights_dir.is_dir():
        return
    scan_cache_dir(weights_dir).delete_revisions(sha).execute()
