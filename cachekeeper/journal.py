"""Per-writer journals: how a container records what it saw and did without touching the manifest.

On a Modal Volume the last writer of a file wins and nothing can lock across containers, so a
shared SQLite file must have one writer. Each process appends JSON lines to a file of its own,
``<root>/.cachekeeper/journal/<host>-<pid>-<random>.jsonl``; ``sync`` folds them into the manifest.
Every record carries a ``uid`` so that folding twice changes nothing.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from .errors import CachekeeperError
from .facts import Facts
from .keys import parse_key
from .store import Root

# Record kinds.
OBSERVED = "observed"  # facts: the environment this process ran in
HIT = "hit"  # a layer's artifact was found and used
MISS = "miss"  # a layer had nothing to use
PUBLISHING = "publishing"  # about to write a sidecar: if the writer dies right after, sync finds it
PUBLISHED = "published"  # this process built and published an artifact (its sidecar exists)
MISMATCH = "mismatch"  # observed facts contradicted what the target declared
CLOSED = "closed"
# Pins are journaled by the CLI, like everything containers do, so that doctor can rebuild them.
PINNED = "pinned"
UNPINNED = "unpinned"  # the writer finished; nothing more will be appended

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


class JournalChunk(NamedTuple):
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
        if not _well_formed(record) or b"\\u" in line and not _storable(record):
            skipped += 1
            continue
        closed = closed or record.get("kind") == CLOSED
        records.append(record)
    return JournalChunk(tuple(records), offset + len(complete), closed, skipped)


_TEXT_FIELDS = ("kind", "layer", "key", "model", "host")
_LAYER = re.compile(r"[a-z][a-z0-9_]*")


def _well_formed(record: Any) -> bool:
    """Whether a record has the shape the manifest stores: a file damaged or written by something
    else must cost its own lines, never the fold of everything else."""
    if not isinstance(record, dict) or not isinstance(record.get("uid"), str):
        return False
    if not isinstance(record.get("kind"), str) or not _number(record.get("at")):
        return False
    if any(record.get(name) is not None and not isinstance(record[name], str) for name in _TEXT_FIELDS):
        return False
    if record.get("seconds") is not None and not _number(record["seconds"]):
        return False
    if record.get("bytes") is not None and not (isinstance(record["bytes"], int) and _number(record["bytes"])):
        return False
    if record.get("layer") is not None and not _LAYER.fullmatch(record["layer"]):
        return False
    if record["kind"] in (PUBLISHING, PUBLISHED):  # sync reads the sidecar these name
        try:
            layer, _ = parse_key(record.get("key") or "")
        except CachekeeperError:
            return False
        if layer != record.get("layer"):
            return False
    if record["kind"] == OBSERVED:
        try:
            Facts.from_json(record["facts"])
        except (AttributeError, KeyError, TypeError, ValueError):
            return False
    return True


def _storable(record: dict[str, Any]) -> bool:
    """No NUL and no lone surrogate in any string (both only reach a line as \\u escapes):
    databases refuse them."""
    try:
        text = json.dumps(record, ensure_ascii=False)
        text.encode()
    except UnicodeEncodeError:
        return False
    return "\\u0000" not in text


def _number(value: Any) -> bool:
    """A finite number that fits a 64-bit column."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return math.isfinite(value) if isinstance(value, float) else abs(value) < 2**63


def journal_files(root: Root) -> Iterator[Path]:
    if root.journal_dir.is_dir():
        yield from sorted(p for p in root.journal_dir.iterdir() if p.name.endswith(SUFFIX) and p.is_file())
