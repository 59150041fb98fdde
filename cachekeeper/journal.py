"""Per-writer journals: how a container records what it saw and did without touching the manifest.

On a Modal Volume the last writer of a file wins and nothing can lock across containers, so a
shared SQLite file must have one writer. Each process appends records (records.py), one JSON line
each, to a file of its own, ``<root>/.cachekeeper/journal/<host>-<pid>-<random>.jsonl``; ``sync``
folds them into the manifest. Every record carries a ``uid`` so that folding twice changes nothing.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

from .records import Kind, Record
from .store import Root
from .store.layout import host_name
from .values import Value

SUFFIX = ".jsonl"


class Journal:
    """An append-only journal owned by this process. Opened lazily, closed by ``close()``.

    Every record is written at once, in one write of whole lines: a process killed at any point
    loses none. By default each write is also synced to disk. A boot's journal
    (``sync_each=False``) is synced only by ``sync()``, before it publishes: the intent must be on
    disk before the sidecar. An fsync costs a boot more than everything else it writes, and what
    it would guard are counts (hits, misses, the closing record), which the kernel writes back
    within seconds: only a crash of the machine itself in those seconds loses them, and ``sync``
    reads such a journal as that of a killed process.
    """

    def __init__(self, root: Root, *, sync_each: bool = True) -> None:
        # The host's name is made a plain file name: whatever it holds, the journal stays in its directory.
        name = f"{host_name()}-{os.getpid()}-{uuid.uuid4().hex[:8]}{SUFFIX}"
        self.path = root.journal_dir / name
        self.sync_each = sync_each
        self._unsynced = False

    def append(self, record: Record) -> None:
        self.extend([record])

    def extend(self, records: Sequence[Record]) -> None:
        """Append the records in one write (and one fsync, with ``sync_each``)."""
        self._write(records, sync=self.sync_each)

    def sync(self) -> None:
        """Make every record written so far durable."""
        if not self._unsynced:
            return
        descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        self._unsynced = False

    def close(self) -> None:
        """Append the closing record (and sync everything, with ``sync_each``)."""
        if self.path.exists():
            self._write([Record.new(Kind.CLOSED)], sync=self.sync_each)

    def _write(self, records: Sequence[Record], *, sync: bool) -> None:
        if not records:
            return
        lines = "".join(record.to_line() for record in records)
        # One write of whole lines with O_APPEND: a crash leaves at worst a torn last line,
        # which readers skip.
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
        try:
            descriptor = os.open(self.path, flags, 0o644)
        except FileNotFoundError:  # the journal directory is made with the first journal
            self.path.parent.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(self.path, flags, 0o644)
        try:
            os.write(descriptor, lines.encode())
            if sync:
                os.fsync(descriptor)  # everything written before, too: fsync is per file
            self._unsynced = not sync
        finally:
            os.close(descriptor)


class JournalChunk(Value):
    records: tuple[Record, ...]
    end: int  # byte offset after the last complete line read
    closed: bool
    skipped: int  # lines that were not valid records


def read_journal(path: Path, offset: int = 0) -> JournalChunk:
    """The complete records of ``path`` from byte ``offset`` on; a torn last line is left unread."""
    with open(path, "rb") as handle:
        handle.seek(offset)
        data = handle.read()
    complete = data[: data.rfind(b"\n") + 1]
    records, skipped, closed = [], 0, False
    for line in complete.splitlines():
        try:
            record = Record.from_line(line)
        except ValueError:  # json's own errors are ValueErrors too
            skipped += 1
            continue
        closed = closed or record.kind is Kind.CLOSED
        records.append(record)
    return JournalChunk(tuple(records), offset + len(complete), closed, skipped)


def journal_files(root: Root) -> Iterator[Path]:
    if root.journal_dir.is_dir():
        yield from sorted(p for p in root.journal_dir.iterdir() if p.name.endswith(SUFFIX) and p.is_file())
