"""File budgets: how many files each root holds, and whether that fits what its Volume allows.

Counted from what was recorded (each artifact's file count at publish, brought up to date by
``verify``), never by walking every file: a compile cache is thousands of small files, and a
command must not read them all to count them. Only cachekeeper's own state directory is listed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .manifest import Manifest, Stored
from .store import Root, Roots
from .values import Value


class RootFiles(Value):
    path: Path
    artifacts: int  # the artifacts' files, as recorded
    state: int  # sidecars, checksums, journals, uses, leases: cachekeeper's own
    budget: int

    @property
    def total(self) -> int:
        return self.artifacts + self.state

    @property
    def over(self) -> bool:
        return self.total > self.budget

    def to_json(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "artifact_files": self.artifacts,
            "state_files": self.state,
            "files": self.total,
            "budget": self.budget,
            "over_budget": self.over,
        }


def files_per_root(manifest: Manifest, roots: Roots, budget: int) -> tuple[RootFiles, ...]:
    artifacts: dict[Path, int] = {root.path: 0 for root in roots.all()}
    for layer, stored in Stored.per_layer(manifest.stored()).items():
        artifacts[roots.for_layer(layer).path] += stored.files
    return tuple(RootFiles(root.path, artifacts[root.path], _state_files(root), budget) for root in roots.all())


def _state_files(root: Root) -> int:
    """Files under the state directory, links and directories not followed."""
    count, stack = 0, [root.state_dir]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                stack.append(Path(entry.path))
            else:
                count += 1
    return count
