"""``prune``: plan which artifacts to delete, then delete them without ever leaving a lie behind.

Policies choose what goes; roots say what never goes:

- scope: ``layer``, ``model`` and ``keys`` narrow what is considered;
- criteria, all of which an artifact must meet to be removed: ``older_than`` (not used for that
  long), ``stale`` (no target derives its key), ``keep_last`` (not among the N most recently used
  of its model and layer; also a floor that ``max_size`` respects);
- budget: ``max_size`` evicts the least recently used until the artifacts in scope fit;
- roots, which every policy respects: pinned keys, keys a running process uses (or builds), the
  keys a live snapshot was built from, and the weights revision a target names.

The plan says why each artifact goes or stays. Each removal then holds the key's build lease (no
builder starts on it meanwhile) and goes: claim the manifest row and mark it ``deleting`` (one
prune per artifact, also across machines sharing a PostgreSQL manifest) → remove the sidecar (no
boot trusts the artifact from here on) → look for uses a last time, and if a boot started using it
meanwhile, put the sidecar back and keep it → remove the files → forget the row. A prune killed at
any step leaves a row marked ``deleting`` that the next prune finishes once nothing uses it, and
never a sidecar without its files. A key rebuilt since the plan was made is a new artifact and is
left alone. Snapshots go before what they were built from. Every prune also clears what killed
processes left behind.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from . import facts as f
from . import journal, uses
from .errors import CachekeeperError, UnknownKeyError, UnsafePath, UsageError
from .facts import Facts, Source
from .keys import derive_key, derive_keys, parse_key
from .layers import WEIGHTS, check_scope, layer_named
from .leases import Lease, Leases, leases_for
from .leftovers import Leftovers, clean_leftovers
from .manifest import Manifest
from .store import (
    DELETING, PUBLISHED, Artifact, Root, Roots, artifact_path, builder_id, check_state, fsync_directory, publish, read_sidecar,
    remove_checksums, remove_tree, unpublish,
)  # fmt: skip
from .target import Target
from .units import format_age, format_bytes

PRUNED = "pruned"
UNTRACKED = "untracked"  # builder of a Hub revision nobody recorded (downloaded outside a boot)


@dataclass(frozen=True, slots=True)
class PrunePlan:
    """What a prune would remove, in order, and why each artifact in scope goes or stays.

    ``reasons`` maps every key in ``removals`` and ``kept`` to its reasons. ``over_budget`` is how
    far the artifacts in scope would still exceed ``max_size`` after the removals.
    """

    removals: tuple[Artifact, ...]
    kept: tuple[Artifact, ...] = ()
    reasons: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    weights_freed: int | None = None  # what huggingface_hub expects to free for the weights removed
    over_budget: int = 0

    @property
    def bytes(self) -> int:
        """Bytes expected to be freed. Hub revisions share blobs: its own estimate counts those."""
        others = sum(a.bytes for a in self.removals if a.layer != WEIGHTS or self.weights_freed is None)
        return others + (self.weights_freed or 0)


@dataclass(frozen=True, slots=True)
class PruneResult:
    removed: tuple[Artifact, ...]
    skipped: tuple[tuple[Artifact, str], ...]  # (artifact, why it was kept)
    leftovers: Leftovers = field(default_factory=Leftovers)

    @property
    def bytes(self) -> int:
        return sum(artifact.bytes for artifact in self.removed)


def plan_prune(
    manifest: Manifest,
    *,
    roots: Roots,
    older_than: float | None = None,
    stale: bool = False,
    keep_last: int | None = None,
    max_size: int | None = None,
    layer: str | None = None,
    model: str | None = None,
    keys: Sequence[str] = (),
    targets: Sequence[Target] = (),
    now: float | None = None,
) -> PrunePlan:
    """Decide what to remove; touches nothing. See the module docstring for the policies."""
    if older_than is None and not stale and keep_last is None and max_size is None and not keys:
        raise UsageError("prune needs a policy: --older-than, --stale, --keep-last, --max-size or --key")
    if stale and not targets:
        raise UsageError("--stale needs the targets that are still deployed: pass --target FILE (repeatable)")
    if keep_last is not None and keep_last < 0 or max_size is not None and max_size < 0:
        raise UsageError("--keep-last and --max-size cannot be negative")
    check_scope(layer, model)
    for key in keys:
        parse_key(key)
    now = time.time() if now is None else now
    unfinished = manifest.artifacts(state=DELETING)
    candidates = _candidates(manifest, roots)
    in_scope = [
        a for a in candidates
        if (layer is None or a.layer == layer) and (model is None or a.model == model) and (not keys or a.key in keys)
    ]  # fmt: skip
    wanted, unresolved = _target_keys(targets, manifest, roots, strict=stale)
    protected = _roots(in_scope, manifest, roots, targets, wanted, unresolved, now)
    dependents = manifest.dependents()

    recent: set[str] = set()
    if keep_last is not None:
        groups: dict[tuple[str, str], list[Artifact]] = {}
        for artifact in in_scope:
            groups.setdefault((artifact.model, artifact.layer), []).append(artifact)
        for group in groups.values():
            group.sort(key=lambda a: (-a.last_used_at, a.key))
            recent.update(a.key for a in group[:keep_last])

    reasons: dict[str, tuple[str, ...]] = {a.key: ("finishing a prune that was interrupted",) for a in unfinished}
    chosen: list[Artifact] = []
    spared: list[Artifact] = []
    for artifact in in_scope:
        met, unmet = _criteria(artifact, older_than, stale, keep_last, keys, wanted, recent, now)
        if protected.get(artifact.key):
            reasons[artifact.key] = tuple(protected[artifact.key])
            spared.append(artifact)
        elif (older_than is not None or stale or keep_last is not None or keys) and not unmet:
            reasons[artifact.key] = tuple(met)
            chosen.append(artifact)
        else:
            reasons[artifact.key] = tuple(unmet) or ("within the size budget",)
            spared.append(artifact)

    _keep_what_live_snapshots_need(chosen, spared, dependents, reasons)

    over_budget = 0
    if max_size is not None:
        total = sum(a.bytes for a in in_scope) - sum(a.bytes for a in chosen)
        going = {a.key for a in chosen}
        evictable = sorted(
            (a for a in spared if not protected.get(a.key) and a.key not in recent),
            key=lambda a: (a.last_used_at, a.key),
        )
        progress = True
        while total > max_size and progress:  # again after a snapshot goes: what it needed may go too
            progress, kept = False, []
            for artifact in evictable:
                if total <= max_size or _live_dependents(artifact, dependents, going):
                    kept.append(artifact)
                    continue
                total -= artifact.bytes
                going.add(artifact.key)
                chosen.append(artifact)
                used = format_age(now - artifact.last_used_at)
                reasons[artifact.key] = (f"least recently used (used {used}): evicted to fit {format_bytes(max_size)}",)
                progress = True
            evictable = kept
        spared = [a for a in spared if a.key not in going]
        over_budget = max(0, total - max_size)

    # A snapshot goes before what it was built from, so a failed removal never strands it.
    chosen.sort(key=lambda a: (not a.depends_on, a.last_used_at, a.key))
    removals = tuple(unfinished) + tuple(chosen)
    return PrunePlan(
        removals, tuple(spared), reasons, _hub_freed(roots, [a for a in removals if a.layer == WEIGHTS]), over_budget
    )


def _live_dependents(artifact: Artifact, dependents: Mapping[str, list[str]], going: set[str]) -> list[str]:
    return [key for key in dependents.get(artifact.key, ()) if key not in going]


def _keep_what_live_snapshots_need(
    chosen: list[Artifact], spared: list[Artifact], dependents: Mapping[str, list[str]], reasons: dict
) -> None:
    """Move back from ``chosen`` whatever an artifact that stays was built from. What a snapshot
    that goes was built from may go with it."""
    going = {a.key for a in chosen}
    changed = True
    while changed:
        changed = False
        for artifact in [a for a in chosen if a.key in dependents]:
            staying = _live_dependents(artifact, dependents, going)
            if staying:
                chosen.remove(artifact)
                going.discard(artifact.key)
                spared.append(artifact)
                reasons[artifact.key] = tuple(f"the live snapshot {key} was built from it" for key in staying)
                changed = True


def _criteria(
    artifact: Artifact,
    older_than: float | None,
    stale: bool,
    keep_last: int | None,
    keys: Sequence[str],
    wanted: Mapping[str, set[str]],
    recent: set[str],
    now: float,
) -> tuple[list[str], list[str]]:
    """(criteria met, criteria not met), each as a reason a person can read."""
    met, unmet = [], []
    used = format_age(now - artifact.last_used_at)
    if keys:
        met.append("named on the command line")
    if older_than is not None:
        limit = _duration(older_than)
        if now - artifact.last_used_at > older_than:
            met.append(f"not used for {limit} (used {used})")
        else:
            unmet.append(f"used {used}, within {limit}")
    if stale:
        if artifact.key in wanted.get(artifact.layer, set()):
            unmet.append("a target still derives this key")
        else:
            met.append("stale: no target derives this key")
    if keep_last is not None:
        group = f"{artifact.model} {artifact.layer}"
        if artifact.key in recent:
            unmet.append(f"among the {keep_last} most recently used of {group}")
        else:
            met.append(f"older than the {keep_last} most recently used of {group}")
    return met, unmet


def _duration(seconds: float) -> str:
    for unit, length in (("w", 7 * 86400), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= length and seconds % length == 0:
            return f"{int(seconds // length)}{unit}"
    return f"{seconds:g}s"


def _candidates(manifest: Manifest, roots: Roots) -> list[Artifact]:
    """Published artifacts, and Hub revisions that nobody recorded (a boot that failed, a manual
    download): they take space too, and huggingface_hub knows how to remove them."""
    tracked = manifest.artifacts(state=PUBLISHED)
    known = {a.key for a in tracked} | {key for _, key in manifest.keys_in_state(DELETING)}
    return tracked + [a for a in hub_revisions(roots) if a.key not in known and not _published(roots, a)]


def _published(roots: Roots, artifact: Artifact) -> bool:
    return read_sidecar(roots.for_layer(artifact.layer), artifact.layer, artifact.key) is not None


def hub_revisions(roots: Roots) -> list[Artifact]:
    """Every model revision in the weights layer's Hub cache, as huggingface_hub scans it, keyed the
    way ``activate()`` keys weights (model and commit sha only)."""
    weights_dir = roots.for_layer(WEIGHTS).layer_dir(WEIGHTS)
    if not weights_dir.is_dir():
        return []
    from huggingface_hub import scan_cache_dir

    layer = layer_named(WEIGHTS)
    found = []
    for repo in scan_cache_dir(weights_dir).repos:
        if repo.repo_type != "model":
            continue
        for revision in repo.revisions:
            facts = Facts.from_values({f.MODEL: repo.repo_id, f.MODEL_REVISION: revision.commit_hash}, Source.RESOLVED)
            accessed = max((file.blob_last_accessed for file in revision.files), default=revision.last_modified)
            found.append(
                Artifact(
                    key=str(derive_key(layer, facts)), layer=WEIGHTS, model=repo.repo_id,
                    relpath=f"{WEIGHTS}/{repo.repo_path.name}/snapshots/{revision.commit_hash}",
                    bytes=revision.size_on_disk, files=len(revision.files), created_at=revision.last_modified,
                    last_used_at=max(accessed, revision.last_modified), builder=UNTRACKED,
                    facts=facts.values(),
                )  # fmt: skip
            )
    return found


def _target_keys(
    targets: Sequence[Target], manifest: Manifest, roots: Roots, *, strict: bool
) -> tuple[dict[str, set[str]], set[str]]:
    """Per layer, the keys the targets derive (facts they leave out inherited as ``check`` does),
    and the models whose revision could not be resolved offline. ``strict`` (for ``--stale``,
    which cannot judge without every key) lets that failure through."""
    from .check import target_facts
    from .errors import RevisionError

    wanted: dict[str, set[str]] = {}
    unresolved: set[str] = set()
    for target in targets:
        try:
            facts = target_facts(target, manifest.latest_observation(target.gpu.name), roots)
        except RevisionError:
            if strict:
                raise
            unresolved.add(str(target.model))
            continue
        for name, key in derive_keys(facts, target.layers).items():
            wanted.setdefault(name, set()).add(str(key))
    return wanted, unresolved


def _roots(
    artifacts: Iterable[Artifact],
    manifest: Manifest,
    roots: Roots,
    targets: Sequence[Target],
    wanted: Mapping[str, set[str]],
    unresolved: set[str],
    now: float,
) -> dict[str, list[str]]:
    """Why each artifact must stay whatever the policy: key → reasons (none: it may go)."""
    pinned, leases = manifest.pinned(), _lease_mechanisms(roots, manifest)
    target_weights = wanted.get(WEIGHTS, set()) if any(t.model for t in targets) else set()
    found: dict[str, list[str]] = {}
    for artifact in artifacts:
        reasons = blockers(artifact, roots, leases, pinned, {}, now)
        if artifact.key in target_weights:
            reasons.append("a target names this weights revision")
        elif artifact.layer == WEIGHTS and artifact.model in unresolved:
            # Which revision the target means is unknown here: keep every revision it might mean.
            reasons.append("a target names this model, and its revision cannot be resolved offline")
        found[artifact.key] = reasons
    return found


def _lease_mechanisms(roots: Roots, manifest: Manifest) -> dict[Root, Leases]:
    return {root: leases_for(root, manifest) for root in roots.all()}


def blockers(
    artifact: Artifact,
    roots: Roots,
    leases: Mapping[Root, Leases],
    pinned: set[str],
    dependents: Mapping[str, list[str]],
    now: float,
) -> list[str]:
    """What forbids removing ``artifact`` right now: pinned, in use, built, or a snapshot's source."""
    root = roots.for_layer(artifact.layer)
    reasons = []
    if artifact.key in pinned:
        reasons.append("pinned")
    for use in uses.users(root, artifact.layer, artifact.key, now):
        reasons.append(f"in use by {use.owner}")
    holder = leases[root].holder(artifact.layer, artifact.key)
    if holder is not None:
        reasons.append(f"a process holds its lease ({holder.owner})")
    for dependent in dependents.get(artifact.key, ()):
        reasons.append(f"the live snapshot {dependent} was built from it")
    return reasons


def _hub_freed(roots: Roots, weights: Sequence[Artifact]) -> int | None:
    if not weights:
        return None
    from huggingface_hub import scan_cache_dir

    root = roots.for_layer(WEIGHTS)
    shas = [_sha(a) for a in weights if os.path.lexists(root.path / a.relpath)]
    if not shas:
        return 0
    return scan_cache_dir(root.layer_dir(WEIGHTS)).delete_revisions(*shas).expected_freed_size


# Removals per batch: one manifest transaction, one directory fsync and one journal write serve
# them all, where one each per artifact made a prune of 100,000 artifacts take hours.
BATCH = 256


@dataclass(frozen=True, slots=True)
class _Removal:
    artifact: Artifact
    root: Root
    lease: Lease
    remove_files: Callable[[], None]


def execute_prune(
    plan: PrunePlan, manifest: Manifest, roots: Roots, *, progress: Callable[[Artifact], None] | None = None
) -> PruneResult:
    """Remove what the plan says, batch by batch, checking the roots again just before each batch:
    a process may have started using an artifact, or someone pinned it, since the plan was made."""
    for root in roots.all():
        check_state(root)
    removed: list[Artifact] = []
    skipped: list[tuple[Artifact, str]] = []
    writer = journal.Journal(roots.main)
    unfinished = {key for _, key in manifest.keys_in_state(DELETING)}
    try:
        for batch in _batches(plan.removals):
            gone, kept = _remove_batch(batch, manifest, roots, writer, unfinished)
            removed += gone
            skipped += kept
            if progress is not None:
                for artifact in batch:
                    progress(artifact)
    finally:
        writer.close()
    return PruneResult(tuple(removed), tuple(skipped), clean_leftovers(manifest, roots))


def _batches(removals: Sequence[Artifact]) -> Iterator[Sequence[Artifact]]:
    """``BATCH`` removals at a time, snapshots first and never in a batch with what they were
    built from: that is checked once they are gone, not while they still look live."""
    snapshots = [a for a in removals if a.depends_on]
    others = [a for a in removals if not a.depends_on]
    for group in (snapshots, others):
        for start in range(0, len(group), BATCH):
            yield group[start : start + BATCH]


def _remove_batch(
    batch: Sequence[Artifact], manifest: Manifest, roots: Roots, writer: journal.Journal, unfinished: set[str]
) -> tuple[list[Artifact], list[tuple[Artifact, str]]]:
    """Remove a batch of artifacts; (removed, [(kept, why)])."""
    kept: list[tuple[Artifact, str]] = []
    ready = _lease_what_may_go(batch, manifest, roots, unfinished, kept)
    gone: list[Artifact] = []
    try:
        # A Hub revision no boot recorded has no manifest row to claim; its lease alone guards it.
        tracked = [r.artifact.key for r in ready if r.artifact.builder != UNTRACKED]
        with manifest.claim_removals(tracked) as claimed:
            unpublished: list[tuple[_Removal, Artifact | None]] = []
            for removal in ready:
                artifact = removal.artifact
                if artifact.builder != UNTRACKED and artifact.key not in claimed:
                    kept.append((artifact, "another prune removed it or is removing it"))
                    continue
                sidecar = read_sidecar(removal.root, artifact.layer, artifact.key)
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
                users = uses.users(removal.root, artifact.layer, artifact.key, now)
                if users:
                    if sidecar is not None:
                        publish(removal.root, sidecar)  # as it was: its files and checksums are untouched
                        manifest.set_state(artifact.key, PUBLISHED)
                    kept.append((artifact, f"in use by {users[0].owner}"))
                    continue
                try:
                    removal.remove_files()
                except CachekeeperError as error:
                    kept.append((artifact, str(error)))  # still ``deleting``: the next prune finishes it
                    continue
                remove_checksums(removal.root, artifact)
                uses.forget_expired(removal.root, artifact.layer, artifact.key)
                gone.append(artifact)
            events = [
                {
                    "uid": uuid.uuid4().hex, "at": now, "layer": a.layer, "key": a.key, "model": a.model,
                    "bytes": a.bytes, "host": builder_id(),
                }  # fmt: skip
                for a in gone
            ]
            manifest.forget_removed([a.key for a in gone], [{**event, "kind": PRUNED} for event in events])
    finally:
        for removal in ready:
            removal.lease.release()
    # Journaled as well, so that a manifest rebuilt by doctor still counts what was pruned.
    writer.extend(PRUNED, events)
    return gone, kept


def _lease_what_may_go(
    batch: Sequence[Artifact], manifest: Manifest, roots: Roots, unfinished: set[str], kept: list[tuple[Artifact, str]]
) -> list[_Removal]:
    """The artifacts of ``batch`` nothing protects, each under its build lease, so that no builder
    starts on a key while its files go; the others go to ``kept`` with the reason."""
    pinned, dependents, now = manifest.pinned(), manifest.dependents(), time.time()
    leases = _lease_mechanisms(roots, manifest)
    ready = []
    for artifact in batch:
        root = roots.for_layer(artifact.layer)
        if artifact.key not in unfinished:
            reasons = blockers(artifact, roots, leases, pinned, dependents, now)
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


def _sha(artifact: Artifact) -> str:
    return artifact.relpath.rstrip("/").rsplit("/", 1)[-1]


def set_pinned(manifest: Manifest, roots: Roots, key: str, *, pinned: bool) -> Artifact:
    """Pin or unpin ``key``: journaled like everything else, so that doctor can rebuild the pins,
    then folded into the manifest at once."""
    from .journal import PINNED, UNPINNED
    from .sync import sync

    layer, _ = parse_key(key)
    artifact = (
        manifest.artifact(key)
        or read_sidecar(roots.for_layer(layer), layer, key)
        or next((a for a in hub_revisions(roots) if a.key == key), None)
    )
    if artifact is None:
        raise UnknownKeyError(f"no artifact {key}: `cachekeeper ls` and `cachekeeper weights` list what there is")
    writer = journal.Journal(roots.main)
    writer.append(PINNED if pinned else UNPINNED, key=key, layer=layer, model=artifact.model, host=builder_id())
    writer.close()
    sync(manifest, roots)
    return artifact


def _prepare_removal(root: Root, artifact: Artifact) -> Callable[[], None]:
    """The deletion of ``artifact``'s files, checked to stay inside the root before anything runs."""
    artifact_path(root, artifact)
    if artifact.layer != WEIGHTS:
        return lambda: remove_tree(root, artifact.relpath)
    weights_dir = root.layer_dir(WEIGHTS)
    if not weights_dir.is_dir() or not os.path.lexists(root.path / artifact.relpath):
        return lambda: None  # already gone (a prune interrupted after removing it)
    # The Hub cache shares blobs between revisions and keeps refs: let huggingface_hub decide
    # what a revision owns. Its strategy deletes snapshots, then refs, then blobs.
    from huggingface_hub import scan_cache_dir

    strategy = scan_cache_dir(weights_dir).delete_revisions(_sha(artifact))
    inside = os.path.realpath(weights_dir)
    for path in (*strategy.repos, *strategy.snapshots, *strategy.refs, *strategy.blobs):
        # A snapshot's link may point anywhere: never let it lead a deletion out of the cache.
        if os.path.commonpath([os.path.realpath(path), inside]) != inside:
            raise UnsafePath(f"refusing to remove {path}: it lies outside {weights_dir}")
    return strategy.execute
