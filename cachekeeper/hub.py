"""The weights layer is a Hugging Face cache: its revisions as artifacts, and removing them.

huggingface_hub owns that layout (blobs shared between revisions, refs, snapshots of links), so
cachekeeper scans it and plans deletions with huggingface_hub's own strategies, one repo at a time,
and carries them out by descriptor (store.descriptors) inside the weights layer.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import facts as f
from .errors import UnsafePath
from .facts import Facts, Source
from .keys import derive_key
from .layers import WEIGHTS, layer_named
from .manifest import Manifest
from .store import Artifact, Root, Roots, artifact_parts, remove_tree
from .values import Value

if TYPE_CHECKING:
    from huggingface_hub import DeleteCacheStrategy, HFCacheInfo

UNTRACKED = "untracked"  # builder of a Hub revision nobody recorded (downloaded outside a boot)


def hub_revisions(roots: Roots) -> list[Artifact]:
    """Every model revision in the weights layer's Hub cache, as huggingface_hub scans it, keyed the
    way ``activate()`` keys weights (model and commit sha only). A repo or revision whose name is
    not a plain repo id or commit sha is left out: nothing is ever made of it."""
    root = roots.for_layer(WEIGHTS)
    scanned = _scan(root.layer_dir(WEIGHTS))
    if scanned is None:
        return []
    layer = layer_named(WEIGHTS)
    found = []
    for repo in scanned.repos:
        if repo.repo_type != "model":
            continue
        for revision in repo.revisions:
            try:
                parts = root.hub_snapshot_parts(repo.repo_id, revision.commit_hash)
            except UnsafePath:
                continue
            facts = Facts.from_values({f.MODEL: repo.repo_id, f.MODEL_REVISION: revision.commit_hash}, Source.RESOLVED)
            accessed = max((file.blob_last_accessed for file in revision.files), default=revision.last_modified)
            found.append(
                Artifact(
                    key=str(derive_key(layer, facts)),
                    layer=WEIGHTS,
                    model=repo.repo_id,
                    relpath="/".join(parts),
                    bytes=revision.size_on_disk,
                    files=len(revision.files),
                    created_at=revision.last_modified,
                    last_used_at=max(accessed, revision.last_modified),
                    builder=UNTRACKED,
                    facts=facts.values(),
                ).checked()
            )
    return found


def revision_sha(artifact: Artifact) -> str:
    return str(artifact.facts.get(f.MODEL_REVISION, ""))


def freed_by(root: Root, weights: Sequence[Artifact]) -> int | None:
    """What huggingface_hub expects removing these revisions to free: revisions share blobs, so it
    counts each blob once, per repo."""
    if not weights:
        return None
    scanned = _scan(root.layer_dir(WEIGHTS))
    if scanned is None:
        return 0
    shas: dict[str, list[str]] = {}
    for artifact in weights:
        shas.setdefault(artifact.model, []).append(revision_sha(artifact))
    return sum(strategy.expected_freed_size for strategy in _strategies(scanned, shas))


def removal(root: Root, artifact: Artifact) -> Callable[[], None]:
    """The deletion of one revision of one repo, decided by huggingface_hub (which blobs the revision
    owns, which refs point at it) and carried out by descriptor inside the weights layer: the same
    commit sha in another repo (a mirror, a fork) is never touched, and no link is followed."""
    artifact_parts(root, artifact)  # refuses a record whose names are not the key's own
    scanned = _scan(root.layer_dir(WEIGHTS))
    strategies = _strategies(scanned, {artifact.model: [revision_sha(artifact)]}) if scanned is not None else []
    if not strategies:
        return _nothing  # already gone: a prune interrupted after removing it, or another process
    [strategy] = strategies
    # huggingface_hub's order: a ref never points at a missing snapshot, nor a snapshot at a missing blob.
    paths = (*strategy.repos, *strategy.snapshots, *strategy.refs, *strategy.blobs)
    return functools.partial(_remove_all, root, [_inside(root, Path(path)) for path in paths])


def _remove_all(root: Root, targets: Sequence[tuple[str, ...]]) -> None:
    for target in targets:
        remove_tree(root, target)


def _strategies(scanned: HFCacheInfo, shas: Mapping[str, Sequence[str]]) -> list[DeleteCacheStrategy]:
    """One deletion strategy per model repo named in ``shas``, planned on that repo alone."""
    strategies = []
    for repo in scanned.repos:
        wanted = [sha for sha in shas.get(repo.repo_id, ()) if any(r.commit_hash == sha for r in repo.revisions)]
        if repo.repo_type == "model" and wanted:
            strategies.append(dataclasses.replace(scanned, repos=frozenset({repo})).delete_revisions(*wanted))
    return strategies


def _inside(root: Root, path: Path) -> tuple[str, ...]:
    """``path`` as names below the weights layer of ``root``; refused if it is anywhere else."""
    try:
        parts = path.relative_to(root.layer_dir(WEIGHTS)).parts
    except ValueError:
        raise UnsafePath(f"refusing to remove {path}: it lies outside {root.layer_dir(WEIGHTS)}") from None
    if not parts or any(part in ("", ".", "..") for part in parts):
        raise UnsafePath(f"refusing to remove {path}: not a plain path inside {root.layer_dir(WEIGHTS)}")
    return (WEIGHTS, *parts)


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


class WeightsRevision(Value):
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
