"""What killed processes leave behind, and clearing it: builds never published, temporary
sidecar files, dead leases. Every prune runs ``clean_leftovers``."""

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
from .leases import STALE_AFTER, clean_file_leases, leases_for
from .manifest import Manifest
from .store import STATE_DIR, Root, Roots, read_sidecar, remove_tree
from .store.layout import SIDECARS

# A build, a sidecar write or a lease write that has not changed anything for this long is dead.
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


def clean_leftovers(manifest: Manifest, roots: Roots, *, now: float | None = None) -> Leftovers:
    """Remove what killed processes left: builds never published, temporary files, dead leases.

    Only what nothing has touched for LEFTOVER_AGE and no live lease or use covers: a slow build,
    a builder whose lease lives where this process cannot see it (a Modal Dict), or a server still
    reading what a killed prune had unpublished, keeps its files.
    """
    now = time.time() if now is None else now
    partial: list[str] = []
    temporary = leases = 0
    for root in roots.all():
        mechanism = leases_for(root, manifest)
        for layer, key, directory in _unpublished_builds(root):
            # A key a killed prune unpublished may still be in use: it stays until nothing uses it.
            busy = mechanism.holder(layer, key) is not None or uses.users(root, layer, key, now)
            if not busy and not _touched_since(directory, now - LEFTOVER_AGE):
                remove_tree(root, root.artifact_parts(layer, key))
                partial.append(f"{layer}/{key}")
        for leftover in _temporary_files(root):
            if not _touched_since(leftover, now - LEFTOVER_AGE):
                leftover.unlink(missing_ok=True)
                temporary += 1
        cleanup = clean_file_leases(root, functools.partial(_published, root), now=now)
        temporary += cleanup.temporary_files
        leases += cleanup.leases
    if manifest.is_server:
        leases += manifest.drop_dead_leases(expired_before=now - STALE_AFTER)
    return Leftovers(tuple(partial), temporary, leases)


def _published(root: Root, layer: str, key: str) -> bool:
    return read_sidecar(root, layer, key) is not None


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
