"""Compacting folded journals: one file per past UTC day, so that files and cursor rows stay bounded.

Every process appends to a journal of its own, and ``sync`` moves each one, once closed and folded,
to ``journal/folded/``: a fleet leaves thousands a day, each with a ``journal_cursor`` row. For
every UTC day before today (by the day a journal was last written), compaction copies that day's
folded journals into one new file, ``journal/folded/compacted-YYYY-MM-DD-<random>.jsonl``, then
drops their cursor rows and removes them; an earlier compacted file of the same day is merged into
the new one the same way. ``doctor`` reads compacted files like any other journal.

Nothing is lost, whenever the process is killed: a new file is written under a temporary name,
synced and renamed into place before anything it holds is removed, and it is never replaced
afterwards (its name is new), so two syncs compacting at once on a Volume without locks each
remove only what their own file holds. A kill after the rename leaves some records in two files:
folding is idempotent by uid, and the next compaction merges the two.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import BinaryIO

from .journal import SUFFIX
from .manifest import Manifest
from .manifest.queries import utc_day
from .store import Root, fsync_directory

PREFIX = "compacted-"
# A temporary file of a compaction that was killed: removed once nobody has written it this long.
_ABANDONED_AFTER = 3600.0
_COPY_CHUNK = 1 << 20


def compact_folded(manifest: Manifest, root: Root, *, now: float) -> int:
    """Compact the folded journals of every day before ``now``'s UTC day; how many journals (not
    counting earlier compacted files) were compacted."""
    folded = root.folded_dir
    today = utc_day(now)
    days: dict[str, list[Path]] = {}
    try:
        entries = list(os.scandir(folded))
    except (FileNotFoundError, NotADirectoryError):
        return 0
    for entry in sorted(entries, key=lambda entry: entry.name):
        if entry.name.endswith(".tmp") and entry.name.startswith("." + PREFIX):
            _remove_if_abandoned(entry, now)
            continue
        if not entry.name.endswith(SUFFIX) or not entry.is_file(follow_symlinks=False):
            continue  # links are never read, nor removed
        if entry.name.startswith(PREFIX):
            day = entry.name[len(PREFIX) : len(PREFIX) + 10]
        else:
            try:
                day = utc_day(entry.stat(follow_symlinks=False).st_mtime)
            except FileNotFoundError:
                continue  # compacted by a concurrent sync
        if day < today:
            days.setdefault(day, []).append(Path(entry.path))
    compacted = 0
    for day, paths in sorted(days.items()):
        journals = [path for path in paths if not path.name.startswith(PREFIX)]
        if journals or len(paths) > 1:
            _compact_day(manifest, folded, day, paths)
            compacted += len(journals)
    return compacted


def _compact_day(manifest: Manifest, folded: Path, day: str, paths: list[Path]) -> None:
    name = f"{PREFIX}{day}-{uuid.uuid4().hex[:12]}{SUFFIX}"
    temporary = folded / f".{name}.tmp"
    copied: list[Path] = []
    try:
        with open(temporary, "xb") as out:
            for path in paths:
                if _append(out, path):
                    copied.append(path)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, folded / name)
    finally:
        temporary.unlink(missing_ok=True)
    fsync_directory(folded)
    # Only now that the new file is durable: the rows first, so that a kill before the files go
    # leaves files without rows (compacted again next time), never rows without files.
    names = [path.name for path in copied if not path.name.startswith(PREFIX)]
    manifest.drop_journal_cursors(names)
    for path in copied:
        path.unlink(missing_ok=True)
    fsync_directory(folded)
    # A sync that was folding one of these journals as they went may have written its row back:
    # dropped again once they are gone (and that sync drops it too, finding them gone).
    manifest.drop_journal_cursors(names)


def _append(out: BinaryIO, path: Path) -> bool:
    """Copy ``path`` (never through a link) to ``out``, ending it with a newline so that a torn
    last line cannot swallow the next file's first; False when it is gone."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return False
    last = b"\n"
    with open(descriptor, "rb") as source:
        while chunk := source.read(_COPY_CHUNK):
            out.write(chunk)
            last = chunk[-1:]
    if last != b"\n":
        out.write(b"\n")
    return True


def _remove_if_abandoned(entry: os.DirEntry[str], now: float) -> None:
    try:
        if now - entry.stat(follow_symlinks=False).st_mtime > _ABANDONED_AFTER:
            os.unlink(entry.path)
    except FileNotFoundError:
        pass
