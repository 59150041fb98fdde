"""What killed processes leave behind, found and cleared: builds never published, temporary files,
dead leases. Every prune finds them (``--dry-run`` shows them) and clears them.

Only the layer directories of a marked root are looked into, and only entries named like a key of
that layer: nothing else in the root, whatever its name, is ever taken for a leftover.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import uses
from .errors import CachekeeperError
from .keys import parse_key
from .layers import DEFAULT_LAYERS, WEIGHTS
from .leases import STALE_AFTER, dead_file_leases, lease_temporary_files, leases_for
from .manifest import Manifest
from .store import Root, Roots, descriptors, read_sidecar, remove_tree
from .store.layout import SIDECARS, layer_name

# A build, a sidecar write or a lease write that has not changed anything for this long is dead.
LEFTOVER_AGE = 3600.0


@dataclass(frozen=True, slots=True)
class Leftovers:
    """What killed processes left: found by a prune (and shown by a dry run), or cleared by it."""

    partial_builds: tuple[str, ...] = ()  # layer/key of build directories never published
    temporary_files: tuple[str, ...] = ()  # paths of files a writer was writing when it died
    leases: tuple[str, ...] = ()  # layer/key of dead lease stacks in the root
    database_leases: int = 0  # dead lease rows of a server manifest

    def __bool__(self) -> bool:
        return bool(self.partial_builds or self.temporary_files or self.leases or self.database_leases)

    def to_json(self) -> dict[str, Any]:
        return {
            "partial_builds": list(self.partial_builds),
            "temporary_files": list(self.temporary_files),
            "leases": list(self.leases),
            "database_leases": self.database_leases,
        }


@dataclass(frozen=True, slots=True)
class _Found:
    root: Root
    builds: tuple[tuple[str, str], ...]
    temporary: tuple[Path, ...]
    leases: tuple[tuple[str, str], ...]


def find_leftovers(
    manifest: Manifest, roots: Roots, *, layers: Iterable[str] = (), now: float | None = None
) -> Leftovers:
    """What ``clear_leftovers`` would remove now; touches nothing. ``layers`` adds layer names to
    look in (a target's own layers) besides the default ones."""
    found = _find(manifest, roots, layers, time.time() if now is None else now)
    return _report(found, _dead_database_leases(manifest, now))


def clear_leftovers(
    manifest: Manifest, roots: Roots, *, layers: Iterable[str] = (), now: float | None = None
) -> Leftovers:
    """Remove what killed processes left: only what nothing has touched for LEFTOVER_AGE and no
    live lease or use covers (a slow build, a builder whose lease lives where this process cannot
    see it, a server still reading what a killed prune had unpublished keep their files)."""
    now = time.time() if now is None else now
    found = _find(manifest, roots, layers, now)
    for each in found:
        each.root.require_marked("clear what killed processes left in")
        for layer, key in each.builds:
            remove_tree(each.root, each.root.artifact_parts(layer, key))
        for path in each.temporary:
            descriptors.remove(each.root.path, path.relative_to(each.root.path).parts)
        for layer, key in each.leases:
            descriptors.remove(each.root.path, (*each.root.leases_dir().relative_to(each.root.path).parts, layer, key))
    database = manifest.drop_dead_leases(expired_before=now - STALE_AFTER) if manifest.is_server else 0
    return _report(found, database)


def _find(manifest: Manifest, roots: Roots, layers: Iterable[str], now: float) -> list[_Found]:
    names = sorted({*(layer.name for layer in DEFAULT_LAYERS), *layers} - {WEIGHTS})
    found = []
    for root in roots.all():
        if not root.marked():
            continue  # never a leftover in a directory cachekeeper did not make a root
        mechanism = leases_for(root, manifest)
        builds = tuple(
            (layer, key)
            for layer, key, directory in _unpublished_builds(root, names)
            # A key a killed prune unpublished may still be in use: it stays until nothing uses it.
            if mechanism.holder(layer, key) is None
            and not uses.users(root, layer, key, now)
            and not _touched_since(directory, now - LEFTOVER_AGE)
        )
        temporary = tuple(path for path in _temporary_files(root) if not _touched_since(path, now - LEFTOVER_AGE))
        temporary += tuple(lease_temporary_files(root, now=now))
        leases = tuple(dead_file_leases(root, functools.partial(_published, root), now=now))
        found.append(_Found(root, builds, temporary, leases))
    return found


def _report(found: list[_Found], database_leases: int) -> Leftovers:
    return Leftovers(
        partial_builds=tuple(f"{layer}/{key}" for each in found for layer, key in each.builds),
        temporary_files=tuple(str(path) for each in found for path in each.temporary),
        leases=tuple(f"{layer}/{key}" for each in found for layer, key in each.leases),
        database_leases=database_leases,
    )


def _dead_database_leases(manifest: Manifest, now: float | None) -> int:
    if not manifest.is_server:
        return 0
    expired_before = (time.time() if now is None else now) - STALE_AFTER
    return manifest.count_dead_leases(expired_before=expired_before)


def _published(root: Root, layer: str, key: str) -> bool:
    return read_sidecar(root, layer, key) is not None


def _unpublished_builds(root: Root, layers: Iterable[str]) -> Iterator[tuple[str, str, Path]]:
    """Directories named like a key of their layer, in the known layers, with no sidecar."""
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
            if key_layer == layer and not root.sidecar_path(layer, entry.name).exists():
                yield layer, entry.name, Path(entry.path)


def _temporary_files(root: Root) -> Iterator[Path]:
    """Sidecars being written when their writer died (``.<name>.<random>.tmp``)."""
    for _, directory in root.state_layers(SIDECARS):
        yield from directory.glob(".*.tmp")


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
