"""Planning a prune: which artifacts go, which stay, and why each one. Touches nothing."""

from __future__ import annotations

import functools
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .. import uses
from ..deploy import resolved_revision, target_facts
from ..errors import RevisionError
from ..hub import freed_by, hub_revisions
from ..keys import derive_keys
from ..layers import WEIGHTS
from ..leases import Leases, leases_for
from ..leftovers import Leftovers, find_leftovers
from ..liveness import Sightings, Witness
from ..manifest import Manifest
from ..manifest.served import live as served_keys
from ..store import DELETING, Artifact, Root, Roots, UnreadableSidecar, look_up_sidecar, read_sidecar
from ..store.layout import LEASES, USES
from ..target import Target
from ..units import format_age, format_bytes, format_duration
from ..values import Value
from .policy import PrunePolicy


class PrunePlan(Value):
    """What a prune would remove, in order, and why each artifact in scope goes or stays.

    ``reasons`` maps every key in ``removals`` and ``kept`` to its reasons. ``over_budget`` is how
    far the artifacts in scope would still exceed ``max_size`` after the removals (in bytes).
    """

    removals: tuple[Artifact, ...]
    kept: tuple[Artifact, ...] = ()
    reasons: Mapping[str, tuple[str, ...]] = {}  # never changed in place
    weights_freed: int | None = None  # what huggingface_hub expects to free for the weights removed
    over_budget: int = 0
    leftovers: Leftovers = Leftovers()  # what killed processes left, cleared too
    layers: tuple[str, ...] = ()  # the targets' own layers, looked into for leftovers
    over_files: int = 0  # how many files the artifacts in scope would still exceed ``max_files`` by

    @property
    def bytes(self) -> int:
        """Bytes expected to be freed. Hub revisions share blobs: its own estimate counts those."""
        others = sum(a.bytes for a in self.removals if a.layer != WEIGHTS or self.weights_freed is None)
        return others + (self.weights_freed or 0)

    def to_json(self) -> dict[str, Any]:
        """The plan as a dry run reports it."""
        return {
            "dry_run": True,
            "removed": [brief(a) for a in self.removals],
            "kept": [brief(a) for a in self.kept],
            "reasons": {key: list(reasons) for key, reasons in self.reasons.items()},
            "skipped": [],
            "bytes": self.bytes,
            "over_budget": self.over_budget,
            "over_files": self.over_files,
            "leftovers": self.leftovers.to_json(),
        }


def brief(artifact: Artifact) -> dict[str, Any]:
    return {"key": artifact.key, "layer": artifact.layer, "model": artifact.model, "bytes": artifact.bytes}


def plan_prune(manifest: Manifest, roots: Roots, policy: PrunePolicy, *, now: float | None = None) -> PrunePlan:
    """Decide what to remove; touches nothing. See the package docstring for the policies."""
    now = time.time() if now is None else now
    for root in roots.all():
        root.require_marked("prune")  # a dry run refuses what a real run would refuse
    older_than, stale, keep_last, max_size = policy.older_than, policy.stale, policy.keep_last, policy.max_size
    keys, targets = policy.scope.keys, policy.targets
    # A removal a killed prune left unfinished is one more candidate: this prune's scope, policy and
    # every protection apply to it as to any other (it may have been pinned or used since).
    unfinished = {key for _, key in manifest.keys_in_state(DELETING)}
    in_scope = [artifact for artifact in _candidates(manifest, roots) if policy.scope.matches(artifact)]
    wanted, unresolved = _target_keys(targets, manifest, roots, strict=stale)
    # Uses and leases, judged by this host's clock as it remembers them; a plan writes nothing
    # (what it sees anew is noted by the prune that carries it out, and its leftovers cleanup).
    witness = Sightings(manifest, clock=lambda: now)
    protected = _roots(in_scope, manifest, roots, targets, wanted, unresolved, witness)
    dependents = manifest.dependents()

    recent: set[str] = set()
    if keep_last is not None:
        groups: dict[tuple[str, str], list[Artifact]] = {}
        for artifact in in_scope:
            groups.setdefault((artifact.model, artifact.layer), []).append(artifact)
        for group in groups.values():
            group.sort(key=lambda a: (-a.last_used_at, a.key))
            recent.update(a.key for a in group[:keep_last])

    reasons: dict[str, tuple[str, ...]] = {}
    chosen: list[Artifact] = []
    spared: list[Artifact] = []
    for artifact in in_scope:
        met, unmet = _criteria(artifact, older_than, stale, keep_last, keys, wanted, recent, now)
        if protected.get(artifact.key):
            reasons[artifact.key] = tuple(protected[artifact.key])
            spared.append(artifact)
        elif (older_than is not None or stale or keep_last is not None or keys) and not unmet:
            finishing = ("finishing a prune that was interrupted",) if artifact.key in unfinished else ()
            reasons[artifact.key] = (*met, *finishing)
            chosen.append(artifact)
        else:
            reasons[artifact.key] = tuple(unmet) or ("within the size budget",)
            spared.append(artifact)

    _keep_what_live_snapshots_need(chosen, spared, dependents, reasons)

    budget = _Budget(max_size, policy.max_files, in_scope, chosen)
    if budget.limited:
        going = {a.key for a in chosen}
        evictable = sorted(
            (a for a in spared if not protected.get(a.key) and a.key not in recent),
            key=lambda a: (a.last_used_at, a.key),
        )
        progress = True
        while budget.over() and progress:  # again after a snapshot goes: what it needed may go too
            progress, kept = False, []
            for artifact in evictable:
                if not budget.over() or _live_dependents(artifact, dependents, going):
                    kept.append(artifact)
                    continue
                budget.take(artifact)
                going.add(artifact.key)
                chosen.append(artifact)
                used = format_age(now - artifact.last_used_at)
                reasons[artifact.key] = (f"least recently used (used {used}): evicted to fit {budget}",)
                progress = True
            evictable = kept
        spared = [a for a in spared if a.key not in going]

    # A snapshot goes before what it was built from, so a failed removal never strands it.
    chosen.sort(key=lambda a: (not a.depends_on, a.last_used_at, a.key))
    removals = tuple(chosen)
    layers = tuple(sorted({layer.name for target in targets for layer in target.layers}))
    return PrunePlan(
        removals,
        tuple(spared),
        reasons,
        freed_by(roots.for_layer(WEIGHTS), [a for a in removals if a.layer == WEIGHTS]),
        budget.excess_bytes(),
        find_leftovers(manifest, roots, layers=layers, witness=witness),
        layers,
        budget.excess_files(),
    )


class _Budget:
    """What must fit (bytes, files or both) and what still counts against it: evictions go, least
    recently used first, until both fit."""

    def __init__(
        self, max_bytes: int | None, max_files: int | None, in_scope: Sequence[Artifact], chosen: Sequence[Artifact]
    ) -> None:
        self.max_bytes, self.max_files = max_bytes, max_files
        self.bytes = sum(a.bytes for a in in_scope) - sum(a.bytes for a in chosen)
        self.files = sum(a.files for a in in_scope) - sum(a.files for a in chosen)

    @property
    def limited(self) -> bool:
        return self.max_bytes is not None or self.max_files is not None

    def over(self) -> bool:
        return self.excess_bytes() > 0 or self.excess_files() > 0

    def take(self, artifact: Artifact) -> None:
        self.bytes -= artifact.bytes
        self.files -= artifact.files

    def excess_bytes(self) -> int:
        return max(0, self.bytes - self.max_bytes) if self.max_bytes is not None else 0

    def excess_files(self) -> int:
        return max(0, self.files - self.max_files) if self.max_files is not None else 0

    def __str__(self) -> str:
        limits = [format_bytes(self.max_bytes)] if self.max_bytes is not None else []
        limits += [f"{self.max_files:,} files"] if self.max_files is not None else []
        return " and ".join(limits)


def _live_dependents(artifact: Artifact, dependents: Mapping[str, list[str]], going: set[str]) -> list[str]:
    return [key for key in dependents.get(artifact.key, ()) if key not in going]


def _keep_what_live_snapshots_need(
    chosen: list[Artifact],
    spared: list[Artifact],
    dependents: Mapping[str, list[str]],
    reasons: dict[str, tuple[str, ...]],
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


@functools.cache
def _limit(older_than: float) -> str:
    return format_duration(older_than)


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
        limit = _limit(older_than)
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


def _candidates(manifest: Manifest, roots: Roots) -> list[Artifact]:
    """Published artifacts, removals a killed prune left unfinished, and Hub revisions that nobody
    recorded (a boot that failed, a manual download): they take space too, and huggingface_hub
    knows how to remove them. Only weights keep their facts (their removal needs the model and
    commit): a plan of 100,000 artifacts does not decode 100,000 fact sets."""
    tracked = manifest.candidates()
    known = {a.key for a in tracked}
    return tracked + [a for a in hub_revisions(roots) if a.key not in known and not _published(roots, a)]


def _published(roots: Roots, artifact: Artifact) -> bool:
    return read_sidecar(roots.for_layer(artifact.layer), artifact.layer, artifact.key) is not None


def _target_keys(
    targets: Sequence[Target], manifest: Manifest, roots: Roots, *, strict: bool
) -> tuple[dict[str, set[str]], set[str]]:
    """Per layer, the keys the targets derive on every landing (facts they leave out inherited
    as ``check`` does, from the landing's own GPU type), and the models whose revision could not
    be resolved offline. ``strict`` (for ``--stale``, which cannot judge without every key) lets
    that failure through."""
    wanted: dict[str, set[str]] = {}
    unresolved: set[str] = set()
    for target in targets:
        try:
            revision = resolved_revision(target, roots.hf_cache())
        except RevisionError:
            if strict:
                raise
            unresolved.add(str(target.model))
            continue
        for landing in target.landings:
            observation = manifest.latest_observation(landing.gpu.name)
            inherited = observation.facts if observation else None
            facts = target_facts(target, inherited, roots.hf_cache(), landing=landing, revision=revision)
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
    witness: Witness,
) -> dict[str, list[str]]:
    """Why each artifact must stay whatever the policy: key → reasons (none: it may go)."""
    pinned, busy = manifest.pinned(), _busy(roots, manifest, witness)
    target_weights = wanted.get(WEIGHTS, set()) if any(t.model for t in targets) else set()
    found: dict[str, list[str]] = {}
    for artifact in artifacts:
        reasons = ["pinned"] if artifact.key in pinned else []
        reasons.extend(busy.get((artifact.layer, artifact.key), ()))
        if artifact.key in target_weights:
            reasons.append("a target names this weights revision")
        elif artifact.layer == WEIGHTS and artifact.model in unresolved:
            # Which revision the target means is unknown here: keep every revision it might mean.
            reasons.append("a target names this model, and its revision cannot be resolved offline")
        found[artifact.key] = reasons
    return found


def _busy(roots: Roots, manifest: Manifest, witness: Witness) -> dict[tuple[str, str], list[str]]:
    """(layer, key) → why a running process forbids removing it: it is in use, or being built.
    Only keys that have a use or a lease at all are looked at, found by one listing per layer."""
    found: dict[tuple[str, str], list[str]] = {}
    leases = lease_mechanisms(roots, manifest, witness)
    for root in roots.all():
        for layer, key in root.keys_with(USES):
            for use in uses.users(root, layer, key, witness):
                found.setdefault((layer, key), []).append(f"in use by {use.owner}")
        leased = manifest.lease_keys() if manifest.is_server else list(root.keys_with(LEASES))
        for layer, key in leased:
            holder = leases[root].holder(layer, key)
            if holder is not None:
                found.setdefault((layer, key), []).append(f"a process holds its lease ({holder.owner})")
    for (layer, key), owners in served_keys(manifest, witness).items():  # servers on read-only roots
        found.setdefault((layer, key), []).extend(f"served read-only by {owner}" for owner in owners)
    return found


def lease_mechanisms(roots: Roots, manifest: Manifest, witness: Witness) -> dict[Root, Leases]:
    return {root: leases_for(root, manifest, witness=witness) for root in roots.all()}


def blockers(
    artifact: Artifact,
    roots: Roots,
    leases: Mapping[Root, Leases],
    pinned: set[str],
    dependents: Mapping[str, list[str]],
    witness: Witness,
    served: Mapping[tuple[str, str], list[str]] | None = None,
) -> list[str]:
    """What forbids removing ``artifact`` right now: pinned, in use (a use file, or a read-only
    server's row in ``served``), built, a snapshot's source, or a sidecar that cannot be read
    (whoever wrote it may use it). Uses and leases are judged by the observer's clock (``witness``)."""
    root = roots.for_layer(artifact.layer)
    reasons = []
    if artifact.key in pinned:
        reasons.append("pinned")
    sidecar = look_up_sidecar(root, artifact.layer, artifact.key)
    if isinstance(sidecar, UnreadableSidecar):
        reasons.append(f"its sidecar cannot be read ({sidecar.reason})")
    for use in uses.users(root, artifact.layer, artifact.key, witness):
        reasons.append(f"in use by {use.owner}")
    for owner in (served or {}).get((artifact.layer, artifact.key), ()):
        reasons.append(f"served read-only by {owner}")
    holder = leases[root].holder(artifact.layer, artifact.key)
    if holder is not None:
        reasons.append(f"a process holds its lease ({holder.owner})")
    for dependent in dependents.get(artifact.key, ()):
        reasons.append(f"the live snapshot {dependent} was built from it")
    return reasons
