"""Folding what containers wrote (journals, sidecars) into the manifest, by its single writer."""

from __future__ import annotations

import os
from dataclasses import dataclass

from . import journal
from .manifest import FoldResult, Manifest
from .store import Roots, read_sidecar

FOLDED_DIR = "folded"


@dataclass(frozen=True, slots=True)
class SyncReport:
    journals: int  # journal files that had something new
    records: int  # records applied for the first time
    artifacts: int  # artifacts newly indexed
    unreadable_lines: int  # torn or garbled lines that were skipped


def sync(manifest: Manifest, roots: Roots) -> SyncReport:
    """Apply every journal record not yet applied; move finished journals to ``journal/folded/``.

    Safe to run at any time and any number of times: the manifest changes in one transaction, and
    a crash before the journals are moved only means they are read again and found applied.
    """
    paths = list(journal.journal_files(roots.main))
    cursors = manifest.journal_cursors([path.name for path in paths]) if paths else {}
    records, new_cursors, finished, unreadable = [], {}, [], 0
    for path in paths:
        offset, closed = cursors.get(path.name, (0, False))
        if closed:
            finished.append(path)
            continue
        try:
            chunk = journal.read_journal(path, offset)
        except FileNotFoundError:
            continue
        if chunk.end == offset and not chunk.closed:
            continue
        records.extend(chunk.records)
        unreadable += chunk.skipped
        new_cursors[path.name] = (chunk.end, chunk.closed)
        if chunk.closed:
            finished.append(path)
    published = []
    for record in records:
        # A writer killed between its sidecar and its "published" record left only the intent.
        if record.get("kind") in (journal.PUBLISHING, journal.PUBLISHED):
            layer, key = str(record.get("layer")), str(record.get("key"))
            # The sidecar, not the journal, says what exists: a prune may have removed it since.
            artifact = read_sidecar(roots.for_layer(layer), layer, key)
            if artifact is not None:
                published.append(artifact)
    events = [record for record in records if record.get("kind") != journal.PUBLISHING]
    # Most syncs find nothing new: they then read, and never load the manifest's write path.
    result = manifest.fold(events, published, new_cursors) if new_cursors else FoldResult(0, 0)
    if finished:
        folded = roots.main.journal_dir / FOLDED_DIR
        folded.mkdir(exist_ok=True)
        for path in finished:
            try:
                os.replace(path, folded / path.name)
            except FileNotFoundError:
                continue
    return SyncReport(len(new_cursors), result.records, result.artifacts, unreadable)
