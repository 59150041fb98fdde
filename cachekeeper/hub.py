"""The weights layer is a Hugging Face cache: its revisions as artifacts, and removing them.

huggingface_hub owns that layout (blobs shared between revisions, refs, snapshots of links), so
cachekeeper scans it and deletes through huggingface_hub's own strategies instead of walking it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from . import facts as f
from .errors import UnsafePath
from .facts import Facts, Source
from .keys import derive_key
from .layers import WEIGHTS, layer_named
from .manifest import Manifest
from .store import Artifact, Root, Roots

if TYPE_CHECKING:
    from huggingface_hub import HFCacheInfo

UNTRACKED = "untracked"  # builder of a Hub revision nobody recorded (downloaded outside a boot)


def hub_revisions(roots: Roots) -> list[Artifact]:
    """Every model revision in the weights layer's Hub cache, as huggingface_hub scans it, keyed the
    way ``activate()`` keys weights (model and commit sha only)."""
    scanned = _scan(roots.hf_cache())
    if scanned is None:
        return []
    layer = layer_named(WEIGHTS)
    found = []
    for repo in scanned.repos:
        if repo.repo_type != "model":
            continue
        for revision in repo.revisions:
            facts = Facts.from_values({f.MODEL: repo.repo_id, f.MODEL_REVISION: revision.commit_hash}, Source.RESOLVED)
            accessed = max((file.blob_last_accessed for file in revision.files), default=revision.last_modified)
            found.append(
                Artifact(
                    key=str(derive_key(layer, facts)),
                    layer=WEIGHTS,
                    model=repo.repo_id,
                    relpath=f"{WEIGHTS}/{repo.repo_path.name}/snapshots/{revision.commit_hash}",
                    bytes=revision.size_on_disk,
                    files=len(revision.files),
                    created_at=revision.last_modified,
                    last_used_at=max(accessed, revision.last_modified),
                    builder=UNTRACKED,
                    facts=facts.values(),
                )
            )
    return found


def revision_sha(artifact: Artifact) -> str:
    return artifact.relpath.rstrip("/").rsplit("/", 1)[-1]


def freed_by(root: Root, weights: Sequence[Artifact]) -> int | None:
    """What huggingface_hub expects removing these revisions to free (they share blobs)."""
    if not weights:
        return None
    shas = [revision_sha(a) for a in weights if os.path.lexists(root.path / a.relpath)]
    scanned = _scan(root.layer_dir(WEIGHTS)) if shas else None
    return scanned.delete_revisions(*shas).expected_freed_size if scanned is not None else 0


def removal(root: Root, artifact: Artifact) -> Callable[[], None]:
    """The deletion of one revision, checked to stay inside the Hub cache before anything runs."""
    weights_dir = root.layer_dir(WEIGHTS)
    scanned = _scan(weights_dir) if os.path.lexists(root.path / artifact.relpath) else None
    if scanned is None:
        return _nothing  # already gone: a prune interrupted after removing it, or another process
    # huggingface_hub decides what a revision owns; its strategy deletes snapshots, then refs, then blobs.
    strategy = scanned.delete_revisions(revision_sha(artifact))
    inside = os.path.realpath(weights_dir)
    for path in (*strategy.repos, *strategy.snapshots, *strategy.refs, *strategy.blobs):
        # A snapshot's link may point anywhere: never let it lead a deletion out of the cache.
        if os.path.commonpath([os.path.realpath(path), inside]) != inside:
            raise UnsafePath(f"refusing to remove {path}: it lies outside {weights_dir}")
    return strategy.execute


def _nothing() -> None:
    pass


def _scan(weights_dir: Path) -> HFCacheInfo | None:
    """huggingface_hub's scan of the Hub cache; None where there is none (or it vanished meanwhile)."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        return scan_cache_dir(weights_dir)
    except CacheNotFound:
        return None


class WeightsRevision(NamedTuple):
    """A revision in the Hub cache as ``cachekeeper weights`` lists it."""

    artifact: Artifact
    recorded: bool  # a boot recorded it (else a failed boot or a manual download left it)
    pinned: bool
    snapshots: tuple[str, ...]  # keys of live snapshots built from it

    def to_json(self) -> dict[str, Any]:
        a = self.artifact
        return {
            "key": a.key,
            "model": a.model,
            "revision": revision_sha(a),
            "bytes": a.bytes,
            "files": a.files,
            "last_used_at": a.last_used_at,
            "recorded": self.recorded,
            "pinned": self.pinned,
            "snapshots": list(self.snapshots),
        }


def list_revisions(roots: Roots, manifest: Manifest) -> list[WeightsRevision]:
    """Every revision in the Hub cache, by model and most recently used first."""
    recorded = {a.key for a in manifest.artifacts(layer=WEIGHTS)}
    pinned, dependents = manifest.pinned(), manifest.dependents()
    return [
        WeightsRevision(a, a.key in recorded, a.key in pinned, tuple(dependents.get(a.key, ())))
        for a in sorted(hub_revisions(roots), key=lambda a: (a.model, -a.last_used_at))
    ]
