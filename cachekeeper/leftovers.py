"""What killed processes leave behind, and clearing it: builds never published, temporary
sidecar files, dead use records, dead leases. Every prune runs ``clean_leftovers``.

Everything here is judged by the observer's own clock (``liveness.Sightings``): a leftover goes
once it has not changed for LEFTOVER_AGE since this host first saw it so, never because a time
written by another machine (a file's mtime, an expiry) looks old. So a first prune only notes
what it sees; a later one, LEFTOVER_AGE on, clears what has not changed since.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import uses
from .errors import CachekeeperError
from .keys import parse_key
from .layers import WEIGHTS
from .leases import clean_db_leases, clean_file_leases, leases_for
from .liveness import Sightings, Witness, digest
from .manifest import Manifest
from .store import STATE_DIR, Root, Roots, look_up_sidecar, read_sidecar, remove_tree
from .store.layout import SIDECARS, USES

# A build, a sidecar write or a lease write that has not changed for this long is dead.
LEFTOVER_AGE = 3600.0


@dataclass(frozen=True, slots=True)
class Leftovers:
    """What killed processes had left and a prune cleared."""

    partial_builds: tuple[str, ...] = ()  # relpaths of build directories never published
    temporary_files: int = 0
    leases: int = 0  # keys whose dead leases were removed

    def __bool__(self) -> bool:
        return bool(self.partial_builds or self.temporary_files or self.leases)

    def to_json(self) -> dict[str, Any]:
        return {
            "partial_builds": list(self.partial_builds),
            "temporary_files": self.temporary_files,
            "leases": self.leases,
        }


def clean_leftovers(
    manifest: Manifest, roots: Roots, *, now: float | None = None, witness: Witness | None = None
) -> Leftovers:
    """Remove what killed processes left: builds never published, temporary files, dead use
    records and dead leases.

    Only what has not changed for LEFTOVER_AGE of this host's time (``witness``, by default the
    manifest's sightings on this host's clock, or ``now`` when given) and no live lease or use
    covers: a slow build, a builder whose lease lives where this process cannot see it (a Modal
    Dict), a stalled builder, or a server still reading what a killed prune had unpublished, keeps
    its files. A key whose sidecar exists but cannot be read is no unfinished build: it is kept.
    """
    if witness is None:
        with Sightings(manifest, clock=time.time if now is None else (lambda: now)) as sightings:
            return clean_leftovers(manifest, roots, witness=sightings)
    partial: list[str] = []
    temporary = leases = 0
    for root in roots.all():
        mechanism = leases_for(root, manifest, witness=witness)
        for layer, key, directory in _unpublished_builds(root):
            thing = f"build {root.path}/{layer}/{key}"
            # A key a killed prune unpublished may still be in use: it stays until nothing uses it.
            busy = mechanism.holder(layer, key) is not None or uses.users(root, layer, key, witness)
            unchanged = witness.ages({thing: _tree_digest(directory)})[thing]
            if not busy and unchanged >= LEFTOVER_AGE:
                remove_tree(root, f"{layer}/{key}")
                witness.forget(thing)
                partial.append(f"{layer}/{key}")
        for directory, found in _temporary_files(root):
            where = f"tmp {directory}/"
            ages = witness.ages({where + path.name: _tree_digest(path) for path in found}, scope=where)
            for path in found:
                if ages[where + path.name] >= LEFTOVER_AGE:
                    path.unlink(missing_ok=True)
                    temporary += 1
        for layer, key in _used_keys(root):
            uses.forget_expired(root, layer, key, witness)
        cleanup = clean_file_leases(root, functools.partial(_published, root), witness)
        temporary += cleanup.temporary_files
        leases += cleanup.leases
    if manifest.is_server:
        leases += clean_db_leases(manifest, lambda layer, key: _published(roots.for_layer(layer), layer, key), witness)
    # Every build, temporary file and use record of every root was looked at just now: what this
    # host remembers of others is gone. (After all roots: a root may lie inside another.)
    for root in roots.all():
        for kind in ("build", "use"):
            witness.forget_unseen(f"{kind} {root.path}/")
        witness.forget_unseen(f"tmp {root.state_dir / SIDECARS}/")
    return Leftovers(tuple(partial), temporary, leases)


def _published(root: Root, layer: str, key: str) -> bool:
    return read_sidecar(root, layer, key) is not None


def _unpublished_builds(root: Root) -> Iterator[tuple[str, str, Path]]:
    """Key directories of every layer but weights (the Hub's own layout) that have no sidecar at
    all (an unreadable one is not the same as none: see ``store.look_up_sidecar``)."""
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
            if layer == layer_dir.name and look_up_sidecar(root, layer, directory.name) is None:
                yield layer, directory.name, directory


def _temporary_files(root: Root) -> Iterator[tuple[Path, list[Path]]]:
    """Sidecars being written when their writer died (``.<name>.<random>.tmp``), per directory."""
    for _, directory in root.state_layers(SIDECARS):
        yield directory, sorted(directory.glob(".*.tmp"))


def _used_keys(root: Root) -> Iterator[tuple[str, str]]:
    """(layer, key) of every key directory under ``.cachekeeper/uses``."""
    for layer, directory in root.state_layers(USES):
        try:
            entries = sorted(os.scandir(directory), key=lambda entry: entry.name)
        except OSError:
            continue
        for entry in entries:
            try:
                owner, _ = parse_key(entry.name)  # only a valid key's name is made into a path again
            except CachekeeperError:
                continue
            if owner == layer and entry.is_dir(follow_symlinks=False):
                yield layer, entry.name


def _tree_digest(path: Path) -> str:
    """What changes when anything at or under ``path`` changes: every entry's name, kind, size and
    modification time. The times are compared as content (did they change?), never as clocks."""
    entries = []
    stack = [path]
    while stack:
        current = stack.pop()
        try:
            stat = current.lstat()
        except FileNotFoundError:
            continue
        entries.append(f"{current.relative_to(path)}\0{stat.st_mode}\0{stat.st_size}\0{stat.st_mtime_ns}")
        if current.is_dir() and not current.is_symlink():
            try:
                stack.extend(Path(entry.path) for entry in os.scandir(current))
            except (FileNotFoundError, NotADirectoryError):
                continue
    return digest("\n".join(sorted(entries)))
