"""Carrying out a prune plan: each removal under the key's build lease, references before data."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from .. import hub, uses
from ..errors import CachekeeperError
from ..journal import Journal
from ..layers import WEIGHTS
from ..leases import Lease
from ..leftovers import Leftovers, clear_leftovers
from ..liveness import Sightings, Witness
from ..manifest import Manifest
from ..manifest.served import live as served_keys
from ..manifest.served import users as served_users
from ..records import Kind, Record
from ..store import (
    PUBLISHED,
    Artifact,
    Root,
    Roots,
    UnreadableSidecar,
    artifact_parts,
    builder_id,
    check_state,
    fsync_directory,
    look_up_sidecar,
    publish,
    read_sidecar,
    remove_checksums,
    remove_tree,
    unpublish,
)
from ..values import Value
from .plan import PrunePlan, blockers, brief, lease_mechanisms


class PruneResult(Value):
    plan: PrunePlan
    removed: tuple[Artifact, ...]
    skipped: tuple[tuple[Artifact, str], ...]  # (artifact, why it was kept)
    leftovers: Leftovers = Leftovers()

    @property
    def bytes(self) -> int:
        return sum(artifact.bytes for artifact in self.removed)

    def to_json(self) -> dict[str, Any]:
        return {
            **self.plan.to_json(),
            "dry_run": False,
            "removed": [brief(a) for a in self.removed],
            "skipped": [{"key": a.key, "reason": reason} for a, reason in self.skipped],
            "bytes": self.bytes,
            "leftovers": self.leftovers.to_json(),
        }


# Removals per batch: one manifest transaction, one directory fsync and one journal write serve
# them all, where one each per artifact made a prune of 100,000 artifacts take hours.
BATCH = 256


class _Removal(Value):
    artifact: Artifact
    root: Root
    lease: Lease
    remove_files: Callable[[], None]


def execute_prune(
    plan: PrunePlan,
    manifest: Manifest,
    roots: Roots,
    *,
    progress: Callable[[Artifact], None] | None = None,
    now: float | None = None,
) -> PruneResult:
    """Remove what the plan says, batch by batch, checking the roots again just before each batch:
    a process may have started using an artifact, or someone pinned it, since the plan was made.

    Uses, leases and leftovers are judged by this host's clock (``now`` when given), as it
    remembers them in the manifest's sightings (see ``liveness``)."""
    for root in roots.all():
        root.require_marked("remove artifacts in")
        check_state(root)
    witness = Sightings(manifest, clock=time.time if now is None else (lambda: now))
    removed: list[Artifact] = []
    skipped: list[tuple[Artifact, str]] = []
    writer = Journal(roots.main)
    with witness:
        try:
            for batch in _batches(plan.removals):
                gone, kept = _remove_batch(batch, manifest, roots, writer, witness)
                removed += gone
                skipped += kept
                if progress is not None:
                    for artifact in batch:
                        progress(artifact)
        finally:
            writer.close()
        leftovers = clear_leftovers(manifest, roots, layers=plan.layers, witness=witness)
    return PruneResult(plan, tuple(removed), tuple(skipped), leftovers)


def _batches(removals: Sequence[Artifact]) -> Iterator[Sequence[Artifact]]:
    """``BATCH`` removals at a time, snapshots first and never in a batch with what they were
    built from: that is checked once they are gone, not while they still look live."""
    snapshots = [a for a in removals if a.depends_on]
    others = [a for a in removals if not a.depends_on]
    for group in (snapshots, others):
        for start in range(0, len(group), BATCH):
            yield group[start : start + BATCH]


def _remove_batch(
    batch: Sequence[Artifact],
    manifest: Manifest,
    roots: Roots,
    writer: Journal,
    witness: Witness,
) -> tuple[list[Artifact], list[tuple[Artifact, str]]]:
    """Remove a batch of artifacts; (removed, [(kept, why)])."""
    kept: list[tuple[Artifact, str]] = []
    ready = _lease_what_may_go(batch, manifest, roots, kept, witness)
    gone: list[Artifact] = []
    try:
        # A Hub revision no boot recorded has no manifest row to claim; its lease alone guards it.
        tracked = [r.artifact.key for r in ready if r.artifact.builder != hub.UNTRACKED]
        with manifest.claim_removals(tracked) as claimed:
            unpublished: list[tuple[_Removal, Artifact | None]] = []
            for removal in ready:
                artifact = removal.artifact
                if artifact.builder != hub.UNTRACKED and artifact.key not in claimed:
                    kept.append((artifact, "another prune removed it or is removing it"))
                    continue
                sidecar = look_up_sidecar(removal.root, artifact.layer, artifact.key)
                if isinstance(sidecar, UnreadableSidecar):  # whoever wrote it may use the files: keep them
                    manifest.set_state(artifact.key, PUBLISHED)
                    kept.append((artifact, f"its sidecar cannot be read ({sidecar.reason})"))
                    continue
                unpublish(removal.root, artifact.layer, artifact.key, durable=False)
                unpublished.append((removal, sidecar))
            # No boot trusts these artifacts from here on, whatever happens to this process.
            for directory in {r.root.sidecar_path(r.artifact.layer, r.artifact.key).parent for r, _ in unpublished}:
                fsync_directory(directory)
            now = time.time()
            for removal, sidecar in unpublished:
                artifact = removal.artifact
                # The last look for uses comes after the sidecar is gone, and a boot registers its
                # use before it reads the sidecar: either the use is seen here, or that boot finds
                # no sidecar and builds afresh (under the lease held until the files are gone).
                users = [use.owner for use in uses.users(removal.root, artifact.layer, artifact.key, witness)]
                users += served_users(manifest, artifact.key, witness)  # read-only servers register there
                if users:
                    if sidecar is not None:
                        publish(removal.root, sidecar)  # as it was: its files and checksums are untouched
                        manifest.set_state(artifact.key, PUBLISHED)
                    kept.append((artifact, f"in use by {users[0]}"))
                    continue
                try:
                    removal.remove_files()
                except CachekeeperError as error:
                    kept.append((artifact, str(error)))  # still ``deleting``: the next prune finishes it
                    continue
                remove_checksums(removal.root, artifact)
                uses.forget_expired(removal.root, artifact.layer, artifact.key, witness)
                gone.append(artifact)
            events = [
                Record(uuid.uuid4().hex, Kind.PRUNED, now, a.layer, a.key, a.model, builder_id(), bytes=a.bytes)
                for a in gone
            ]
            manifest.forget_removed([a.key for a in gone], events)
    finally:
        for removal in ready:
            removal.lease.release()
    # Journaled as well, so that a manifest rebuilt by doctor still counts what was pruned.
    writer.extend(events)
    return gone, kept


def _lease_what_may_go(
    batch: Sequence[Artifact],
    manifest: Manifest,
    roots: Roots,
    kept: list[tuple[Artifact, str]],
    witness: Witness,
) -> list[_Removal]:
    """The artifacts of ``batch`` nothing protects, each under its build lease, so that no builder
    starts on a key while its files go; the others go to ``kept`` with the reason."""
    pinned, dependents = manifest.pinned(), manifest.dependents()
    leases, served = lease_mechanisms(roots, manifest, witness), served_keys(manifest, witness)
    ready = []
    for artifact in batch:
        root = roots.for_layer(artifact.layer)
        # Checked again for every removal, a killed prune's unfinished ones included.
        reasons = blockers(artifact, roots, leases, pinned, dependents, witness, served)
        if reasons:
            kept.append((artifact, "; ".join(reasons)))
            continue
        if _republished(root, artifact):
            kept.append((artifact, "rebuilt since it was planned for removal"))
            continue
        lease = leases[root].acquire(artifact.layer, artifact.key)
        if lease is None:
            kept.append((artifact, "a process holds its lease"))
            continue
        try:
            remove_files = _prepare_removal(root, artifact)  # refuse before changing anything
        except CachekeeperError as error:
            lease.release()
            kept.append((artifact, str(error)))
            continue
        ready.append(_Removal(artifact, root, lease, remove_files))
    return ready


def _republished(root: Root, artifact: Artifact) -> bool:
    current = read_sidecar(root, artifact.layer, artifact.key)
    return current is not None and current.created_at != artifact.created_at


def _prepare_removal(root: Root, artifact: Artifact) -> Callable[[], None]:
    """The deletion of ``artifact``'s files, checked to stay inside the root before anything runs."""
    parts = artifact_parts(root, artifact)
    if artifact.layer == WEIGHTS:
        return hub.removal(root, artifact)
    return lambda: _remove_files(root, parts)


def _remove_files(root: Root, parts: tuple[str, ...]) -> None:
    remove_tree(root, parts)
