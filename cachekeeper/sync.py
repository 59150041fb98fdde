"""Folding what containers wrote (journals, sidecars) into the manifest, by its single writer."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from .errors import ManifestError
from .journal import journal_files, read_journal
from .manifest import Manifest
from .quarantine import fold_records, strike_dead_boots
from .records import Kind, Record
from .store import Artifact, Roots, check_state, read_sidecar

logger = logging.getLogger("cachekeeper")


@dataclass(frozen=True, slots=True)
class SyncReport:
    journals: int  # journal files that had something new
    records: int  # records applied for the first time
    artifacts: int  # artifacts newly indexed
    unreadable_lines: int  # torn or garbled lines that were skipped

    def to_json(self) -> dict[str, Any]:
        return {
            "journals": self.journals,
            "records": self.records,
            "artifacts": self.artifacts,
            "unreadable_lines": self.unreadable_lines,
        }


def sync(manifest: Manifest, roots: Roots) -> SyncReport:
    """Apply every journal record not yet applied; move finished journals to ``journal/folded/``.

    Safe to run at any time and any number of times: the manifest changes in one transaction, and
    a crash before the journals are moved only means they are read again and found applied.
    """
    for root in roots.all():
        check_state(root)
    paths = list(journal_files(roots.main))
    cursors = manifest.journal_cursors([path.name for path in paths]) if paths else {}
    records: list[Record] = []
    new_cursors, finished, unreadable = {}, [], 0
    for path in paths:
        offset, closed = cursors.get(path.name, (0, False))
        if closed:
            finished.append(path)
            continue
        try:
            chunk = read_journal(path, offset)
        except FileNotFoundError:
            continue
        if chunk.end == offset and not chunk.closed:
            continue
        records.extend(chunk.records)
        unreadable += chunk.skipped
        new_cursors[path.name] = (chunk.end, chunk.closed)
        if chunk.closed:
            finished.append(path)
    published = published_artifacts(records, roots)
    # Most syncs find nothing new: they then read, and never load the manifest's write path.
    applied = indexed = 0
    if new_cursors:
        applied, indexed = manifest.fold(records, published, new_cursors)
    # A prune may have removed an artifact between the look at its sidecar above and the fold,
    # and forgotten its row before the fold wrote it again: that row would list what is gone.
    for artifact in published:
        if read_sidecar(roots.for_layer(artifact.layer), artifact.layer, artifact.key) is None:
            manifest.forget(artifact.key, created_at=artifact.created_at)
    fold_records(manifest, roots, records)
    strike_dead_boots(manifest, roots)
    if finished:
        folded = roots.main.folded_dir
        try:
            folded.mkdir(exist_ok=True)
            for path in finished:
                try:
                    os.replace(path, folded / path.name)
                except FileNotFoundError:
                    continue
        except OSError as error:  # a read-only root: the cursors already say these are done
            logger.warning("cachekeeper: cannot move folded journals to %s: %s", folded, error.strerror)
    return SyncReport(len(new_cursors), applied, indexed, unreadable)


def published_artifacts(records: list[Record], roots: Roots) -> list[Artifact]:
    """The artifacts that publishing records name and whose sidecar exists: the sidecar, not the
    journal, says what exists (a prune may have removed it since). A writer killed between its
    sidecar and its ``published`` record left only the intent (``publishing``)."""
    found = []
    for record in records:
        if record.kind in (Kind.PUBLISHING, Kind.PUBLISHED) and record.layer and record.key:
            artifact = read_sidecar(roots.for_layer(record.layer), record.layer, record.key)
            if artifact is not None:
                found.append(artifact)
    return found


def refresh(manifest: Manifest, roots: Roots) -> SyncReport | None:
    """``sync`` for commands that only read: on a read-only root (a Volume mounted read-only, a
    copy) they answer from the manifest as it stands, with a warning, instead of failing."""
    try:
        return sync(manifest, roots)
    except (ManifestError, OSError) as error:
        if not _read_only(manifest, roots):
            raise
        logger.warning(
            "cachekeeper: %s is read-only, so what containers recorded since the last sync is not in the manifest: %s",
            roots.main.path,
            error,
        )
        return None


def _read_only(manifest: Manifest, roots: Roots) -> bool:
    paths = [roots.main.state_dir]
    if manifest.url.sqlite_file is not None:
        paths.append(manifest.url.sqlite_file)
    return any(path.exists() and not os.access(path, os.W_OK) for path in paths)
