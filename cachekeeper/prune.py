"""``prune``: plan which artifacts to delete, then delete them without ever leaving a lie behind.

Each removal goes: claim the manifest row and mark it ``deleting`` (one prune per artifact, also
across machines sharing a PostgreSQL manifest) → remove the sidecar (no boot trusts the
artifact from here on) → remove the files → forget the row. A prune killed at any step leaves
a row marked ``deleting`` that the next prune finishes, and never a sidecar without its files.
A key rebuilt in between is a new artifact and is left alone.

Every prune also clears what killed processes left behind (``clean_leftovers``).
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .errors import CachekeeperError
from .layers import WEIGHTS
from .keys import parse_key
from .leases import STALE_AFTER, clean_file_leases, leases_for
from .manifest import DELETING, PUBLISHED, Manifest
from .store import STATE_DIR, Artifact, Root, Roots, builder_id, read_sidecar, remove_tree, unpublish

# A build, a sidecar write or a lease write that has not changed anything for this long is dead.
LEFTOVER_AGE = 3600.0


@dataclass(frozen=True, slots=True)
class PrunePlan:
    removals: tuple[Artifact, ...]

    @property
    def bytes(self) -> int:
        return sum(artifact.bytes for artifact in self.removals)


@dataclass(frozen=True, slots=True)
class Leftovers:
    """What killed processes had left and a prune cleared."""

    partial_builds: tuple[str, ...] = ()  # relpaths of build directories never published
    temporary_files: int = 0
    leases: int = 0  # keys whose dead leases were removed


@dataclass(frozen=True, slots=True)
class PruneResult:
    removed: tuple[Artifact, ...]
    skipped: tuple[tuple[Artifact, str], ...]  # (artifact, why it was kept)
    leftovers: Leftovers = field(default_factory=Leftovers)

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
        if leases_for(root, manifest).holder(artifact.layer, artifact.key) is not None:
            skipped.append((artifact, "a process holds its lease"))
            continue
        if _republished(root, artifact):
            skipped.append((artifact, "rebuilt since it was planned for removal"))
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
    return PruneResult(tuple(removed), tuple(skipped), clean_leftovers(manifest, roots))


def _republished(root: Root, artifact: Artifact) -> bool:
    current = read_sidecar(root, artifact.layer, artifact.key)
    return current is not None and current.created_at != artifact.created_at


def clean_leftovers(manifest: Manifest, roots: Roots, *, now: float | None = None) -> Leftovers:
    """Remove what killed processes left: builds never published, temporary files, dead leases.

    Only what nothing has touched for LEFTOVER_AGE and no live lease covers: a slow build, or a
    builder whose lease lives where this process cannot see it (a Modal Dict), keeps its files.
    """
    now = time.time() if now is None else now
    partial: list[str] = []
    temporary = leases = 0
    for root in roots.all():
        mechanism = leases_for(root, manifest)
        for layer, key, directory in _unpublished_builds(root):
            if mechanism.holder(layer, key) is None and not _touched_since(directory, now - LEFTOVER_AGE):
                remove_tree(root, f"{layer}/{key}")
                partial.append(f"{layer}/{key}")
        for leftover in _temporary_files(root):
            if not _touched_since(leftover, now - LEFTOVER_AGE):
                leftover.unlink(missing_ok=True)
                temporary += 1
        cleanup = clean_file_leases(root, lambda layer, key: read_sidecar(root, layer, key) is not None, now=now)
        temporary += cleanup.temporary_files
        leases += cleanup.leases
    if manifest.is_server:
        leases += manifest.drop_dead_leases(expired_before=now - STALE_AFTER)
    return Leftovers(tuple(partial), temporary, leases)


def _unpublished_builds(root: Root) -> Iterator[tuple[str, str, Path]]:
    """Key directories of every layer but weights (the Hub's own layout) that have no sidecar."""
    if not root.path.is_dir():
        return
    for layer_dir in sorted(root.path.iterdir()):
        if layer_dir.name in (WEIGHTS, STATE_DIR) or not layer_dir.is_dir() or layer_dir.is_symlink():
            continue
        for directory in sorted(layer_dir.iterdir()):
            try:
                layer, _ = parse_key(directory.name)
            except CachekeeperError:
                continue  # not ours
            if layer == layer_dir.name and read_sidecar(root, layer, directory.name) is None:
                yield layer, directory.name, directory


def _temporary_files(root: Root) -> Iterator[Path]:
    """Sidecars being written when their writer died (``.<name>.<random>.tmp``)."""
    sidecars = root.state_dir / "sidecars"
    if sidecars.is_dir():
        for layer_dir in sidecars.iterdir():
            if layer_dir.is_dir() and not layer_dir.is_symlink():
                yield from layer_dir.glob(".*.tmp")


def _touched_since(path: Path, cutoff: float) -> bool:
    """Whether anything at or under ``path`` changed after ``cutoff`` (links are not followed)."""
    stack = [path]
    while stack:
        current = stack.pop()
        try:
            if current.lstat().st_mtime > cutoff:
                return True
            if current.is_dir() and not current.is_symlink():
                stack.extend(Path(entry.path) for entry in os.scandir(current))
        except FileNotFoundError:
            continue
    return False


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
