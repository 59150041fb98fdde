"""What killed processes leave behind, found and cleared: builds never published, temporary files,
dead leases. Every prune finds them (``--dry-run`` shows them) and clears them.

Only the known layer directories of a marked root are looked into, and only entries named like a
key of that layer: nothing else in the root, whatever its name, is ever taken for a leftover.
Everything is judged by the observer's own clock (``liveness.Sightings``): a leftover goes once it
has not changed for LEFTOVER_AGE since this host first saw it so, never because a time written by
another machine (a file's mtime, an expiry) looks old. So a first prune only notes what it sees; a
later one, LEFTOVER_AGE on, clears what has not changed since.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from . import uses
from .errors import CachekeeperError
from .keys import parse_key
from .layers import DEFAULT_LAYERS, WEIGHTS
from .leases import dead_db_leases, dead_file_leases, forget_lease, leases_for
from .liveness import Sightings, Witness, digest
from .manifest import Manifest, served
from .store import Root, Roots, descriptors, look_up_sidecar, read_sidecar, remove_tree
from .store.layout import SIDECARS, layer_name
from .values import Value

# A build, a sidecar write or a lease write that has not changed for this long is dead.
LEFTOVER_AGE = 3600.0


class Leftovers(Value):
    """What killed processes left: found by a prune (and shown by a dry run), or cleared by it."""

    partial_builds: tuple[str, ...] = ()  # layer/key of build directories never published
    temporary_files: tuple[str, ...] = ()  # paths of files a writer was writing when it died
    leases: tuple[str, ...] = ()  # layer/key of dead lease stacks (files) or rows (a server manifest)

    def __bool__(self) -> bool:
        return bool(self.partial_builds or self.temporary_files or self.leases)

    def to_json(self) -> dict[str, Any]:
        return {
            "partial_builds": list(self.partial_builds),
            "temporary_files": list(self.temporary_files),
            "leases": list(self.leases),
        }


class _Found(Value):
    root: Root
    builds: tuple[tuple[str, str], ...]
    temporary: tuple[Path, ...]
    lease_stacks: tuple[tuple[str, str], ...]


def find_leftovers(
    manifest: Manifest, roots: Roots, *, layers: Iterable[str] = (), witness: Witness | None = None
) -> Leftovers:
    """What ``clear_leftovers`` would remove now; touches nothing (``witness``: a memory that
    writes nothing, by default this command's own). ``layers`` adds layer names to look in (a
    target's own layers) besides the default ones."""
    witness = witness or Sightings(manifest)  # never flushed: a look writes nothing
    found = _find(manifest, roots, layers, witness)
    rows = dead_db_leases(manifest, _published_in(roots), witness) if manifest.is_server else []
    return _report(found, [(layer, key) for layer, key, _ in rows])


def clear_leftovers(
    manifest: Manifest,
    roots: Roots,
    *,
    layers: Iterable[str] = (),
    now: float | None = None,
    witness: Witness | None = None,
) -> Leftovers:
    """Remove what killed processes left: only what has not changed for LEFTOVER_AGE of this host's
    time (``witness``, by default the manifest's sightings on this host's clock, or ``now`` when
    given) and no live lease or use covers. A slow build, a builder whose lease lives where this
    process cannot see it (a Modal Dict), a stalled builder, or a server still reading what a
    killed prune had unpublished keeps its files; so does a key whose sidecar exists but cannot
    be read."""
    if witness is None:
        with Sightings(manifest, clock=time.time if now is None else (lambda: now)) as sightings:
            return clear_leftovers(manifest, roots, layers=layers, witness=sightings)
    found = _find(manifest, roots, layers, witness)
    for each in found:
        root = each.root
        root.require_marked("clear what killed processes left in")
        for layer, key in each.builds:
            remove_tree(root, root.artifact_parts(layer, key))
            witness.forget(_build(root, layer, key))
        for path in each.temporary:
            descriptors.remove(root.path, path.relative_to(root.path).parts)
        for layer, key in each.lease_stacks:
            descriptors.remove(root.path, (*root.leases_dir().relative_to(root.path).parts, layer, key))
            forget_lease(root, layer, key, witness)
        uses.forget_stopped(root, witness)
    # Every use record of every root was looked at just now. (After all roots: a root may lie
    # inside another.)
    for each in found:
        witness.forget_unseen(f"use {each.root.path}/")
    rows = dead_db_leases(manifest, _published_in(roots), witness) if manifest.is_server else []
    for layer, key, token in rows:
        manifest.drop_lease(layer, key, token)
        witness.forget(f"lease db/{layer}/{key}/")
    stopped = served.dead(manifest, witness)  # read-only servers that stopped without saying so
    served.drop(manifest, stopped)
    for token in stopped:
        witness.forget(f"served/{token}")
    return _report(found, [(layer, key) for layer, key, _ in rows])


def _find(manifest: Manifest, roots: Roots, layers: Iterable[str], witness: Witness) -> list[_Found]:
    names = sorted({*(layer.name for layer in DEFAULT_LAYERS), *layers} - {WEIGHTS})
    found = []
    for root in roots.all():
        if not root.marked():
            continue  # never a leftover in a directory cachekeeper did not make a root
        mechanism = leases_for(root, manifest, witness=witness)
        builds = []
        for layer, key, directory in _unpublished_builds(root, names):
            thing = _build(root, layer, key)
            # A key a killed prune unpublished may still be in use: it stays until nothing uses it.
            busy = mechanism.holder(layer, key) is not None or uses.users(root, layer, key, witness)
            unchanged = witness.ages({thing: _tree_digest(directory)})[thing]
            if not busy and unchanged >= LEFTOVER_AGE:
                builds.append((layer, key))
        temporary = []
        for directory, files in _temporary_files(root):
            where = f"tmp {directory}/"
            ages = witness.ages({where + path.name: _tree_digest(path) for path in files}, scope=where)
            temporary += [path for path in files if ages[where + path.name] >= LEFTOVER_AGE]
        dead = dead_file_leases(root, functools.partial(_published, root), witness)
        found.append(_Found(root, tuple(builds), (*temporary, *dead.temporary_files), tuple(dead.stacks)))
    # Every build and temporary file of every root was looked at just now: what this host remembers
    # of others is gone. (After all roots: a root may lie inside another.)
    for root in roots.all():
        witness.forget_unseen(f"build {root.path}/")
        witness.forget_unseen(f"tmp {root.state_dir / SIDECARS}/")
    return found


def _report(found: list[_Found], lease_rows: list[tuple[str, str]]) -> Leftovers:
    return Leftovers(
        partial_builds=tuple(f"{layer}/{key}" for each in found for layer, key in each.builds),
        temporary_files=tuple(str(path) for each in found for path in each.temporary),
        leases=tuple(f"{layer}/{key}" for each in found for layer, key in each.lease_stacks)
        + tuple(f"{layer}/{key}" for layer, key in lease_rows),
    )


def _build(root: Root, layer: str, key: str) -> str:
    return f"build {root.path}/{layer}/{key}"


def _published(root: Root, layer: str, key: str) -> bool:
    return read_sidecar(root, layer, key) is not None


def _published_in(roots: Roots) -> functools.partial[bool]:
    return functools.partial(_published_anywhere, roots)


def _published_anywhere(roots: Roots, layer: str, key: str) -> bool:
    return _published(roots.for_layer(layer), layer, key)


def _unpublished_builds(root: Root, layers: Iterable[str]) -> Iterator[tuple[str, str, Path]]:
    """Directories named like a key of their layer, in the known layers, with no sidecar at all (an
    unreadable one is not the same as none: see ``store.look_up_sidecar``)."""
    for layer in layers:
        try:
            directory = root.layer_dir(layer_name(layer))
            entries = sorted(os.scandir(directory), key=lambda entry: entry.name)
        except (OSError, CachekeeperError):
            continue
        if directory.is_symlink():
            continue
        for entry in entries:
            try:
                key_layer, _ = parse_key(entry.name)
            except CachekeeperError:
                continue  # not ours
            if key_layer == layer and look_up_sidecar(root, layer, entry.name) is None:
                yield layer, entry.name, Path(entry.path)


def _temporary_files(root: Root) -> Iterator[tuple[Path, list[Path]]]:
    """Sidecars being written when their writer died (``.<name>.<random>.tmp``), per directory."""
    for _, directory in root.state_layers(SIDECARS):
        yield directory, sorted(directory.glob(".*.tmp"))


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
