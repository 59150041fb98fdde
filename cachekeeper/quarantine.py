"""Quarantine: an artifact that boots keep failing on, moved out of its key's way.

When a boot counts enough strikes against an artifact (strikes.py), it quarantines it and builds
the key afresh. Under the key's build lease (no builder, prune or other quarantine at the same
time), and only while no other live process uses it:

1. a record of what is moved and why: ``<root>/.cachekeeper/quarantine/<layer>/<name>.json``,
   holding the sidecar as it was, the strikes' reasons and the canary, if any;
2. the sidecar goes: from here on no boot trusts the artifact;
3. the key's directory is renamed to ``<root>/.cachekeeper/quarantine/<layer>/<name>``, one
   ``rename`` inside the root, by directory descriptors (a link on the way is refused, never
   followed); ``<name>`` is the key, when, and a random part;
4. its canary and its strikes go: the next build starts with none.

Two boots that decide at once: one holds the lease and moves it; the other finds the lease taken
or, after, no sidecar, and boots as on any cold key. A process killed between the steps leaves a
record without a sidecar (the key is cold; the record explains it) or an unpublished directory
(the next builder clears it, as any unfinished build). Paths come only from the validated layer,
key and name (store.layout), never from what a record says.

``restore`` (``cachekeeper unquarantine KEY``) moves it back and republishes its sidecar, if no
newer artifact took the key; ``remove`` (``prune --quarantined``) deletes it. Both hold the key's
lease. The manifest learns all of it from records (``Kind.QUARANTINED``, ``UNQUARANTINED`` and
``PRUNED`` with the name in ``ref``), folded by ``fold_records``: the root, not the journal, says
what is quarantined, as sidecars say what is published.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import canary, strikes, uses
from .errors import CachekeeperError, QuarantineRefused, UnknownKeyError
from .keys import parse_key
from .records import FOLDED_APART, Kind, Record
from .store import Artifact, Root, Roots, builder_id, descriptors, publish, read_sidecar, write_atomically
from .store.layout import QUARANTINE, quarantine_name, quarantined_key
from .store.publishing import remove_checksums, unpublish
from .strikes import Strike
from .values import Value

if TYPE_CHECKING:
    from .leases import Leases
    from .manifest import Manifest
    from .scope import Scope

logger = logging.getLogger("cachekeeper")

MOVED = "moved"  # quarantined now
GONE = "gone"  # no longer published: someone quarantined or pruned it first
BUSY = "busy"  # a process holds its lease
IN_USE = "in use"  # another live process uses it

_FORMAT = 1


class Quarantined(Value):
    """One quarantined artifact: what it was, why and when it was moved, and under which name."""

    layer: str
    key: str
    name: str  # its directory (and, with .json, its record) under .cachekeeper/quarantine/<layer>/
    at: float
    host: str  # who quarantined it (host:pid)
    reasons: tuple[str, ...]  # the strikes' reasons
    strikes: tuple[str, ...]  # the strikes' uids
    artifact: Artifact | None  # its sidecar as it was (None when that could not be read)
    canary: str | None = None  # the canary digest its builder stored

    def checked(self) -> Quarantined:
        """This entry, if its name is one a path may be made of, and of its key; raises otherwise
        (UnsafePath, ValueError). Called wherever an entry is made, as ``Artifact.checked``."""
        quarantine_name(self.layer, self.name)
        if quarantined_key(self.name) != self.key:
            raise ValueError(f"the quarantined name {self.name} is not one of {self.key}")
        return self

    @property
    def model(self) -> str:
        return self.artifact.model if self.artifact is not None else "none"

    @property
    def bytes(self) -> int:
        return self.artifact.bytes if self.artifact is not None else 0

    def to_json(self) -> dict[str, Any]:
        return {
            "format": _FORMAT,
            "layer": self.layer,
            "key": self.key,
            "name": self.name,
            "at": self.at,
            "host": self.host,
            "reasons": list(self.reasons),
            "strikes": list(self.strikes),
            "artifact": None if self.artifact is None else self.artifact.to_json(),
            "canary": self.canary,
        }

    @classmethod
    def from_json(cls, data: Any) -> Quarantined:
        """Raises ValueError naming what is wrong (a name that is no quarantined name included)."""
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            raise ValueError(f"not a quarantine record of format {_FORMAT}")
        try:
            artifact = None if data.get("artifact") is None else Artifact.from_json(data["artifact"])
            return cls(
                layer=str(data["layer"]),
                key=str(data["key"]),
                name=str(data["name"]),
                at=float(data["at"]),
                host=str(data["host"]),
                reasons=tuple(str(reason) for reason in data["reasons"]),
                strikes=tuple(str(uid) for uid in data.get("strikes", ())),
                artifact=artifact,
                canary=None if data.get("canary") is None else str(data["canary"]),
            ).checked()
        except (KeyError, TypeError, CachekeeperError) as error:
            raise ValueError(f"quarantine record field missing or malformed: {error}") from None

    def why(self) -> str:
        """One line for people: why it was quarantined."""
        return f"{len(self.reasons)} failed boot(s): {'; '.join(self.reasons) or 'no reason recorded'}"

    def when(self) -> str:
        return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(self.at))

    def summary(self) -> dict[str, Any]:
        """As ``ls`` and ``check`` show it."""
        return {
            "key": self.key,
            "layer": self.layer,
            "model": self.model,
            "status": "quarantined",
            "name": self.name,
            "quarantined_at": self.at,
            "by": self.host,
            "reasons": list(self.reasons),
            "bytes": self.bytes,
        }


class Outcome(Value):
    status: str  # MOVED, GONE, BUSY or IN_USE
    entry: Quarantined | None = None
    why: str = ""


def quarantine(
    root: Root, layer: str, key: str, counted: Sequence[Strike], leases: Leases, served: Sequence[str] = ()
) -> Outcome:
    """Move the published artifact of ``key`` out of its way (see the module's docstring).
    ``served``: the owners of live uses a server manifest holds (read-only servers)."""
    lease = leases.acquire(layer, key)
    if lease is None:
        return Outcome(BUSY, why="a process holds its lease (building, pruning or quarantining it)")
    try:
        sidecar = read_sidecar(root, layer, key)
        if sidecar is None:
            return Outcome(GONE, why="it is no longer published")
        mine = builder_id()
        others = [owner for owner in (*(use.owner for use in uses.users(root, layer, key)), *served) if owner != mine]
        if others:
            return Outcome(IN_USE, why=f"it is in use by {others[0]}")
        now = time.time()
        entry = Quarantined(
            layer=layer,
            key=key,
            name=f"{key}--{int(now * 1000):013d}-{uuid.uuid4().hex[:8]}",
            at=now,
            host=mine,
            reasons=tuple(strike.reason for strike in counted),
            strikes=tuple(strike.uid for strike in counted),
            artifact=sidecar,
            canary=canary.stored(root, layer, key),
        ).checked()
        write_atomically(root.quarantine_record_path(layer, entry.name), _encode(entry))
        unpublish(root, layer, key)
        _move(root, root.artifact_parts(layer, key), root.quarantine_parts(layer, entry.name))
        canary.remove(root, layer, key)
        strikes.forget(root, layer, key)
        return Outcome(MOVED, entry)
    finally:
        lease.release()


def quarantined_records(entry: Quarantined) -> list[Record]:
    """What a quarantine journals: the manifest reads the rest from the record in the root."""
    return [
        Record.new(
            Kind.QUARANTINED,
            layer=entry.layer,
            key=entry.key,
            model=entry.model,
            host=entry.host,
            reason="; ".join(entry.reasons),
            ref=entry.name,
        )
    ]


def entries(roots: Roots, *, key: str | None = None) -> list[Quarantined]:
    """Every quarantined artifact under ``roots`` (of ``key`` only, if given), newest first.
    Records that cannot be read, or that name another place, are left out."""
    found: list[Quarantined] = []
    for root in roots.all():
        for layer, directory in root.state_layers(QUARANTINE):
            if roots.for_layer(layer) != root:
                continue
            for path in sorted(directory.glob("*.json")):
                if key is not None and quarantined_key(path.stem) != key:
                    continue
                entry = read_entry(root, layer, path.stem)
                if entry is not None:
                    found.append(entry)
    return sorted(found, key=lambda entry: (-entry.at, entry.name))


def read_entry(root: Root, layer: str, name: str) -> Quarantined | None:
    try:
        path = root.quarantine_record_path(layer, name)
        data = descriptors.read(root.path, _parts(root, path), limit=1 << 22)
        entry = Quarantined.from_json(json.loads(data or b"null"))
    except (OSError, ValueError, CachekeeperError):
        return None
    return entry if (entry.layer, entry.name) == (layer, name) else None


def path_of(root: Root, entry: Quarantined) -> Path:
    """Where a quarantined artifact's files are (for reading and showing)."""
    return root.path.joinpath(*root.quarantine_parts(entry.layer, entry.name))


def newest(roots: Roots, key: str) -> Quarantined:
    """The newest quarantined artifact of ``key``, or UnknownKeyError."""
    parse_key(key)
    found = entries(roots, key=key)
    if not found:
        raise UnknownKeyError(f"{key} is not quarantined: `cachekeeper ls` lists what is")
    return found[0]


def restore(root: Root, entry: Quarantined, leases: Leases) -> Artifact:
    """Move a quarantined artifact back under its key and publish its sidecar again; refused
    (QuarantineRefused) when a newer artifact took the key, or a process holds its lease."""
    layer, key = entry.layer, entry.key
    if entry.artifact is None:
        raise QuarantineRefused(f"cannot restore {entry.name}: its record holds no readable sidecar")
    lease = leases.acquire(layer, key)
    if lease is None:
        raise QuarantineRefused(f"a process holds the lease of {key} (building or pruning it): try again later")
    try:
        if read_sidecar(root, layer, key) is not None:
            raise QuarantineRefused(
                f"{key} is published again (a newer artifact took the key): the quarantined copy "
                f"{entry.name} stays; `cachekeeper prune --quarantined --key {key}` removes it"
            )
        parts = root.artifact_parts(layer, key)
        with descriptors.opened(root.path, parts[:-1]) as parent:
            if parent is not None and _exists(parts[-1], parent):
                raise QuarantineRefused(
                    f"{root.path.joinpath(*parts)} exists (a newer build of {key}, finished or not): "
                    f"the quarantined copy {entry.name} stays"
                )
        if not _move(root, root.quarantine_parts(layer, entry.name), parts):
            raise QuarantineRefused(f"the files of {entry.name} are gone: nothing to restore")
        if entry.canary is not None:
            canary.store(root, layer, key, entry.canary)
        strikes.forget(root, layer, key)
        publish(root, entry.artifact)
        root.quarantine_record_path(layer, entry.name).unlink(missing_ok=True)
    finally:
        lease.release()
    return entry.artifact


def restored_records(entry: Quarantined, artifact: Artifact) -> list[Record]:
    host = builder_id()
    return [
        Record.new(Kind.UNQUARANTINED, layer=entry.layer, key=entry.key, model=entry.model, host=host, ref=entry.name),
        Record.new(
            Kind.PUBLISHED, layer=entry.layer, key=entry.key, model=entry.model, host=host, bytes=artifact.bytes
        ),
    ]


def remove(root: Root, entry: Quarantined, leases: Leases) -> bool:
    """Delete a quarantined artifact: its files, then its record. False when a process holds the
    key's lease (restoring it, say): it stays for the next prune."""
    lease = leases.acquire(entry.layer, entry.key)
    if lease is None:
        return False
    try:
        descriptors.remove(root.path, root.quarantine_parts(entry.layer, entry.name))
        current = read_sidecar(root, entry.layer, entry.key)
        if entry.artifact is not None and (current is None or current.checksum != entry.artifact.checksum):
            remove_checksums(root, entry.artifact)
        root.quarantine_record_path(entry.layer, entry.name).unlink(missing_ok=True)
    finally:
        lease.release()
    return True


def removed_records(gone: Iterable[Quarantined]) -> list[Record]:
    host = builder_id()
    return [
        Record.new(Kind.PRUNED, layer=e.layer, key=e.key, model=e.model, host=host, bytes=e.bytes, ref=e.name)
        for e in gone
    ]


def fold_records(manifest: Manifest, roots: Roots, records: Sequence[Record]) -> None:
    """Apply strike and quarantine records to the manifest, after ``Manifest.fold`` stored their
    events: idempotent, and a quarantine whose record is no longer in the root is not listed."""
    wanted = [
        record for record in records if record.kind in FOLDED_APART and (record.kind is not Kind.PRUNED or record.ref)
    ]
    if not wanted:
        return
    from .manifest import quarantined as rows

    found: dict[tuple[str, str], dict[str, Any]] = {}
    for record in wanted:
        if record.kind is Kind.QUARANTINED and record.layer and record.ref:
            try:
                root = roots.for_layer(record.layer)
                entry = read_entry(root, record.layer, record.ref)
            except CachekeeperError:
                entry = None
            if entry is not None:
                found[(entry.layer, entry.name)] = entry.to_json()
    rows.apply(manifest, wanted, found)


def listed(manifest: Manifest, *, layer: str | None = None, model: str | None = None) -> list[Quarantined]:
    """The quarantined artifacts the manifest lists (``ls``), newest first; a row whose names
    cannot be trusted is left out, with a warning."""
    from .manifest import quarantined as rows

    found = []
    for row in rows.quarantined(manifest, layer=layer, model=model):
        try:
            found.append(Quarantined.from_json(row))
        except ValueError as error:
            logger.warning("cachekeeper: ignoring the manifest's quarantined row %r: %s", row.get("name"), error)
    return found


def strike_dead_boots(manifest: Manifest, roots: Roots) -> int:
    """Make strikes of the attempts of boots that died inside their block (strikes.dead_attempts),
    journal them and fold them in; how many; and remove the directories of keys left without a
    record. For ``sync``: a key nobody boots any more still shows its strikes. A root that refuses
    the writes is left as it is, with a warning."""
    from .journal import Journal

    made: list[Record] = []
    try:
        for root in roots.all():
            for layer, key in strikes.struck_keys(root):
                if roots.for_layer(layer) != root:
                    continue
                tally = strikes.look(root, layer, key)
                if not (tally.strikes or tally.attempts):
                    strikes.tidy(root, layer, key)  # every boot of the key settled
                made.extend(each.record() for each in strikes.dead_attempts(root, tally))
        if made:
            journal = Journal(roots.main)
            journal.extend(made)
            journal.close()
    except OSError as error:
        logger.warning("cachekeeper: could not record the strikes of boots that died: %s", error)
    if made:
        manifest.fold(made, [], {})
        fold_records(manifest, roots, made)
    return len(made)


def _move(root: Root, source: tuple[str, ...], target: tuple[str, ...]) -> bool:
    """Rename ``source`` to ``target`` (names below the root) by directory descriptors; False when
    there was nothing to move."""
    root.path.joinpath(*target[:-1]).mkdir(parents=True, exist_ok=True)
    with (
        descriptors.opened(root.path, source[:-1]) as source_dir,
        descriptors.opened(root.path, target[:-1]) as target_dir,
    ):
        if source_dir is None or target_dir is None:
            return False
        try:
            os.rename(source[-1], target[-1], src_dir_fd=source_dir, dst_dir_fd=target_dir)
        except FileNotFoundError:
            return False
    return True


def _exists(name: str, directory: int) -> bool:
    try:
        os.stat(name, dir_fd=directory, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _parts(root: Root, path: Path) -> tuple[str, ...]:
    return path.relative_to(root.path).parts


def _encode(entry: Quarantined) -> bytes:
    return json.dumps(entry.to_json(), indent=1, sort_keys=True).encode()


# --- housekeeping: prune --quarantined, unquarantine ----------------------------------------------


class QuarantineRemoval(Value):
    """What ``prune --quarantined`` removed (or, in a dry run, would remove), and what it kept."""

    removed: tuple[Quarantined, ...]
    kept: tuple[tuple[Quarantined, str], ...] = ()
    dry_run: bool = False

    @property
    def bytes(self) -> int:
        return sum(entry.bytes for entry in self.removed)

    def to_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "removed": [entry.summary() for entry in self.removed],
            "kept": [{**entry.summary(), "reason": reason} for entry, reason in self.kept],
            "bytes": self.bytes,
        }


def remove_quarantined(
    manifest: Manifest,
    roots: Roots,
    *,
    scope: Scope,
    older_than: float | None = None,
    dry_run: bool = False,
    now: float | None = None,
) -> QuarantineRemoval:
    """Delete the quarantined artifacts in ``scope`` (quarantined more than ``older_than`` seconds
    ago, if given), journal their removal and fold it into the manifest."""
    from .journal import Journal
    from .leases import leases_for

    now = time.time() if now is None else now
    chosen, kept = [], []
    for entry in entries(roots):
        if not _in_scope(scope, entry):
            continue
        if older_than is not None and now - entry.at <= older_than:
            continue
        chosen.append(entry)
    if dry_run:
        return QuarantineRemoval(tuple(chosen), dry_run=True)
    for root in roots.all():
        root.require_marked("remove quarantined artifacts in")
    removed = []
    for entry in chosen:
        root = roots.for_layer(entry.layer)
        if remove(root, entry, leases_for(root, manifest)):
            removed.append(entry)
        else:
            kept.append((entry, "a process holds the lease of its key (restoring it?)"))
    records = removed_records(removed)
    if records:
        journal = Journal(roots.main)
        journal.extend(records)
        journal.close()
        manifest.fold(records, [], {})
        fold_records(manifest, roots, records)
    return QuarantineRemoval(tuple(removed), tuple(kept))


def unquarantine(manifest: Manifest, roots: Roots, key: str) -> tuple[Quarantined, Artifact]:
    """Move the newest quarantined artifact of ``key`` back and publish it again (see ``restore``);
    journaled and folded into the manifest."""
    from .journal import Journal
    from .leases import leases_for

    entry = newest(roots, key)
    root = roots.for_layer(entry.layer)
    root.require_marked("restore a quarantined artifact in")
    artifact = restore(root, entry, leases_for(root, manifest))
    records = restored_records(entry, artifact)
    journal = Journal(roots.main)
    journal.extend(records)
    journal.close()
    manifest.fold(records, [artifact], {})
    fold_records(manifest, roots, records)
    return entry, artifact


def _in_scope(scope: Scope, entry: Quarantined) -> bool:
    return (
        (scope.layer is None or entry.layer == scope.layer)
        and (scope.model is None or entry.model == scope.model)
        and (not scope.keys or entry.key in scope.keys)
    )
