"""Folding what containers wrote (journals, sidecars) into the manifest, by its single writer."""

from __future__ import annotations

import logging
import math
import os
import time
from typing import Any

from . import uses
from .compaction import compact_folded
from .errors import ManifestError
from .journal import journal_files, read_journal
from .liveness import Sightings
from .manifest import Manifest
from .manifest.queries import DAY
from .quarantine import fold_records, strike_dead_boots
from .records import Kind, Record
from .store import Artifact, Roots, check_state, read_sidecar
from .values import Value

logger = logging.getLogger("cachekeeper")

# How long events are kept one by one before only their daily counts are (``sync --keep-events``).
KEEP_EVENTS = 90 * DAY


class Tidied(Value):
    """What a tidying sync removed so that state stays bounded."""

    uses: int  # use records of stopped processes removed
    journals: int  # folded journals compacted into daily files (their cursor rows dropped)
    events: int  # events older than the window, now only counted in daily summaries
    summarised_before: float  # the start of the UTC day before which events are summarised

    def to_json(self) -> dict[str, Any]:
        return {
            "uses_forgotten": self.uses,
            "journals_compacted": self.journals,
            "events_summarised": self.events,
            "summarised_before": self.summarised_before,
        }


class SyncReport(Value):
    journals: int  # journal files that had something new
    records: int  # records applied for the first time
    artifacts: int  # artifacts newly indexed
    unreadable_lines: int  # torn or garbled lines that were skipped
    tidied: Tidied | None = None  # with ``tidy``

    def to_json(self) -> dict[str, Any]:
        return {
            "journals": self.journals,
            "records": self.records,
            "artifacts": self.artifacts,
            "unreadable_lines": self.unreadable_lines,
            "tidied": None if self.tidied is None else self.tidied.to_json(),
        }


def sync(
    manifest: Manifest,
    roots: Roots,
    *,
    tidy: bool = False,
    keep_events: float = KEEP_EVENTS,
    now: float | None = None,
) -> SyncReport:
    """Apply every journal record not yet applied; move finished journals to ``journal/folded/``.
    With ``tidy`` (``cachekeeper sync`` and ``prune``), also keep state bounded: see ``_tidy``.

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
        result = manifest.fold(records, published, new_cursors)
        applied, indexed = result.records, result.artifacts
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
    # A concurrent sync may have compacted a journal, dropping its cursor row, while this one folded
    # it and wrote the row back: the rows of journals now gone from both directories go (looked for
    # where sync moves them from, then to, so that a journal being moved is seen).
    journal_dir, folded = roots.main.journal_dir, roots.main.folded_dir
    gone = [
        name for name in new_cursors if not os.path.lexists(journal_dir / name) and not os.path.lexists(folded / name)
    ]
    if gone:
        manifest.drop_journal_cursors(gone)
    tidied = _tidy(manifest, roots, keep_events, time.time() if now is None else now) if tidy else None
    return SyncReport(len(new_cursors), applied, indexed, unreadable, tidied)


def _tidy(manifest: Manifest, roots: Roots, keep_events: float, now: float) -> Tidied:
    """Remove what would otherwise grow without bound, each step safe to kill and to repeat:

    - the use records of stopped processes, of every key (``uses.forget_stopped``, which asks the
      liveness rule through ``uses.forget_expired``), and key directories left empty;
    - folded journals of past days, compacted into one file per UTC day, and their cursor rows
      (``compaction``);
    - events older than ``keep_events``, counted per UTC day, kind, layer and model into
      ``event_summary`` and deleted. Whole days only: those that ended ``keep_events`` ago. Events
      carry their writer's clock; a skew between machines only moves an event's detail to a
      summary a little earlier or later, and every count is kept either way.
    """
    present = [root for root in roots.all() if root.path.exists()]  # a Volume not mounted here: nothing to tidy
    for root in present:
        root.require_marked("tidy the state of")  # nothing is removed from a directory cachekeeper did not make
    forgotten = compacted = 0
    try:
        with Sightings(manifest) as witness:  # a use is dead once unchanged for its TTL of this host's time
            for root in present:
                forgotten += uses.forget_stopped(root, witness)
        if roots.main in present:
            compacted = compact_folded(manifest, roots.main, now=now)
    except OSError as error:  # a read-only root: nothing is lost by tidying it later
        logger.warning("cachekeeper: cannot tidy %s: %s", roots.main.path, error.strerror or error)
    before = math.floor((now - keep_events) / DAY) * DAY
    return Tidied(forgotten, compacted, manifest.summarise_events(before=before), before)


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
