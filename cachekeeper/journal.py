"""Per-writer journals: how a container records what it saw and did without touching the manifest.

On a Modal Volume the last writer of a file wins and nothing can lock across containers, so a
shared SQLite file must have one writer. Each process appends JSON lines to a file of its own,
``<root>/.cachekeeper/journal/<host>-<pid>-<random>.jsonl``; ``sync`` folds them into the manifest.
Every record carries a ``uid`` so that folding twice changes nothing.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .store import Root

# Record kinds.
OBSERVED = "observed"  # facts: the environment this process ran in
HIT = "hit"  # a layer's artifact was found and used
MISS = "miss"  # a layer had nothing to use
PUBLISHING = "publishing"  # about to write a sidecar: if the writer dies right after, sync finds it
PUBLISHED = "published"  # this process built and published an artifact (its sidecar exists)
MISMATCH = "mismatch"  # observed facts contradicted what the target declared
CLOSED = "closed"  # the writer finished; nothing more will be appended

SUFFIX = ".jsonl"


class Journal:
    """An append-only journal owned by this process. Opened lazily, closed by ``close()``."""

    def __init__(self, root: Root) -> None:
        name = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}{SUFFIX}"
        self.path = root.journal_dir / name

    def append(self, kind: str, **fields: Any) -> None:
        self.extend(kind, [fields])

    def extend(self, kind: str, records: Sequence[Mapping[str, Any]]) -> None:
        """Append one record of ``kind`` per mapping, in one write and one fsync."""
        if not records:
            return
        now = time.time()
        lines = "".join(
            json.dumps({"uid": uuid.uuid4().hex, "kind": kind, "at": now, **fields}, sort_keys=True, separators=(",", ":"))
            + "\n"
            for fields in records
        )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # One write of whole lines with O_APPEND: a crash leaves at worst a torn last line,
        # which readers skip.
        descriptor = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(descriptor, lines.encode())
            os.fsync(descriptor)
        finally:
            os.close(descriptor)

    def close(self) -> None:
        if self.path.exists():
            self.append(CLOSED)


@dataclass(frozen=True, slots=True)
class JournalChunk:
    records: tuple[dict[str, Any], ...]
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
            record = json.loads(line)
        except ValueError:
            skipped += 1
            continue
        if not isinstance(record, dict) or not isinstance(record.get("uid"), str):
            skipped += 1
            continue
        closed = closed or record.get("kind") == CLOSED
        records.append(record)
    return JournalChunk(tuple(records), offset + len(complete), closed, skipped)


def journal_files(root: Root) -> Iterator[Path]:
    if root.journal_dir.is_dir():
        yield from sorted(p for p in root.journal_dir.iterdir() if p.name.endswith(SUFFIX) and p.is_file())
