"""Leases over storage that can only *create if absent*: files in a root, entries of a Modal Dict.

Files and Dict entries offer one atomic operation, create-if-absent (``os.link`` /
``Dict.put(..., skip_if_exists=True)``): no compare-and-swap, no conditional delete. So a key's
lease is a stack of generations ``1, 2, 3, ...``; the top one is the lease. Taking it means
creating generation ``top + 1`` after seeing ``top`` dead (released, its holder proven gone, or
unchanged for its TTL by the reader's clock).
Create-if-absent lets exactly one process create each generation, and generations are never
removed while anyone may still climb them, so two live holders would need someone to have seen
the older one dead. Renewals and releases overwrite only the holder's own generation, which no
longer matters once a higher one exists. Whether the top generation is dead is judged by the
reader's own clock (``lease.judge``): released, its holder proven gone, or unchanged for a TTL
since the reader first saw it so. Clocks need not agree.

On NFS, ``link`` and exclusive create are atomic (NFSv3 and later), but a client may serve a
lease file's attributes from its cache for up to ``acregmax`` (60 s by default): keep the TTL
several times longer than that (``lease_ttl=300``) or mount with ``lookupcache=positive``.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from ..liveness import Memory, Witness, digest, record_bytes
from ..processes import this_process
from ..store import Root, builder_id, write_atomically
from ..values import Value
from .lease import DEFAULT_TTL, STALE_AFTER, Lease, LeaseInfo, judge


class _Slots(Protocol):
    """Named records with an atomic create-if-absent: all that generation leases need."""

    where: str  # what witnesses call this store

    def create(self, name: str, info: LeaseInfo) -> bool: ...

    def read(self, name: str) -> LeaseInfo | None: ...

    def write(self, name: str, info: LeaseInfo) -> None: ...

    def top_hint(self, stem: str) -> int:
        """A generation of ``stem`` known to exist, to start climbing from; 0 when none is known."""


def _slot(stem: str, generation: int) -> str:
    return f"{stem}/{generation}"


class _GenerationLeases:
    def __init__(self, slots: _Slots, ttl: float, witness: Witness | None = None) -> None:
        self._slots = slots
        self.ttl = ttl
        # A process that waits for a lease remembers, by its monotonic clock, when it first saw it.
        self.witness: Witness = Memory() if witness is None else witness

    def holder(self, layer: str, key: str) -> LeaseInfo | None:
        stem = f"{layer}/{key}"
        generation, top = self._top(stem)
        return top if top is not None and self._judge(stem, generation, top)[0] else None

    def acquire(self, layer: str, key: str) -> Lease | None:
        stem = f"{layer}/{key}"
        generation, top = self._top(stem)
        while True:
            if top is not None and self._judge(stem, generation, top)[0]:
                return None
            mine = LeaseInfo(builder_id(), uuid.uuid4().hex, time.time() + self.ttl, str(this_process()), self.ttl)
            if self._slots.create(_slot(stem, generation + 1), mine):
                keeper = _GenerationKeeper(self._slots, stem, generation + 1)
                return Lease(stem, mine, self.ttl, keeper, previous=top)
            generation, top = self._top(stem, generation + 1)  # someone else took that generation

    def _judge(self, stem: str, generation: int, top: LeaseInfo) -> tuple[bool, float]:
        """(whether the top generation may be live, how long it has been as it is)."""
        scope = f"lease {self._slots.where}/{stem}/"
        top = top._replace(token=f"{generation} {top.token}")  # a new generation is a new record
        return judge(top, scope + "top", scope, self.witness, self.ttl)

    def _top(self, stem: str, start: int | None = None) -> tuple[int, LeaseInfo | None]:
        generation = self._slots.top_hint(stem) if start is None else start
        top = self._slots.read(_slot(stem, generation)) if generation else None
        while (above := self._slots.read(_slot(stem, generation + 1))) is not None:
            generation, top = generation + 1, above
        return generation, top


class _GenerationKeeper(Value):
    slots: _Slots
    stem: str
    generation: int

    def holds(self, info: LeaseInfo) -> bool:
        current = self.slots.read(_slot(self.stem, self.generation))
        above = self.slots.read(_slot(self.stem, self.generation + 1))
        return current is not None and current.token == info.token and above is None

    def renew(self, info: LeaseInfo, renewed: LeaseInfo) -> bool:
        if not self.holds(info):
            return False
        self.slots.write(_slot(self.stem, self.generation), renewed)
        return True

    def release(self, info: LeaseInfo) -> None:
        if self.holds(info):
            self.slots.write(_slot(self.stem, self.generation), info._replace(released=True))


# --- files ------------------------------------------------------------------------------------

_GENERATION_FILE = re.compile(r"(\d+)\.lease")


class _FileSlots:
    """``<root>/.cachekeeper/leases/<layer>/<key>/<generation>.lease``."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.where = str(base)

    def _path(self, name: str) -> Path:
        stem, _, generation = name.rpartition("/")
        return self.base / stem / f"{generation}.lease"

    def create(self, name: str, info: LeaseInfo) -> bool:
        # Readers never see a half-written lease, and only one creator wins.
        return write_atomically(self._path(name), info.to_json().encode(), exclusive=True)

    def read(self, name: str) -> LeaseInfo | None:
        content = record_bytes(self._path(name))
        if content is None:
            return None
        try:
            return LeaseInfo.from_json(content)
        except ValueError:
            # Damaged by something outside cachekeeper: honoured until it has not changed for a TTL.
            return LeaseInfo.unreadable(content)

    def write(self, name: str, info: LeaseInfo) -> None:
        write_atomically(self._path(name), info.to_json().encode())

    def top_hint(self, stem: str) -> int:
        try:
            names = os.listdir(self.base / stem)
        except (FileNotFoundError, NotADirectoryError):
            return 0
        generations = [int(m.group(1)) for m in map(_GENERATION_FILE.fullmatch, names) if m]
        return max(generations, default=0)


class FileLeases(_GenerationLeases):
    """Leases kept as files in a cache root: local disks and shared file systems such as NFS.

    Not for Modal Volumes: containers do not see each other's files until they reload, so every
    container would take its own lease. Use ``ModalDictLeases`` there.
    """

    def __init__(self, root: Root, ttl: float = DEFAULT_TTL, witness: Witness | None = None) -> None:
        super().__init__(_FileSlots(root.leases_dir()), ttl, witness)
        self.root = root


class DeadLeases(Value):
    """What a root's lease files hold that nobody needs any more."""

    stacks: list[tuple[str, str]]  # (layer, key) of dead lease stacks that may go
    temporary_files: list[Path]  # written by a writer killed mid-write


def dead_file_leases(root: Root, published: Callable[[str, str], bool], witness: Witness) -> DeadLeases:
    """Dead lease stacks whose key is published, or that have been dead for STALE_AFTER of the
    observer's time (``witness``), and temporary files left by writers killed mid-write. A live or
    recently dead stack is never among them: someone may be climbing it right now."""
    slots = _FileSlots(root.leases_dir())
    leases = _GenerationLeases(slots, DEFAULT_TTL, witness)
    dead = DeadLeases([], [])
    for layer, key, directory in _lease_dirs(slots.base):
        leftovers = sorted(directory.glob(".*.tmp"))
        where = f"tmp {directory}/"
        ages = witness.ages({where + path.name: _stat_digest(path) for path in leftovers}, scope=where)
        # A writer needs microseconds, not an hour.
        dead.temporary_files.extend(path for path in leftovers if ages[where + path.name] > STALE_AFTER / 24)
        stem = f"{layer}/{key}"
        generation, top = leases._top(stem)
        if top is None:
            continue
        live, dead_for = leases._judge(stem, generation, top)
        if not live and (published(layer, key) or dead_for >= STALE_AFTER):
            dead.stacks.append((layer, key))
    # Everything there is was looked at: what this observer remembers and did not see is gone.
    witness.forget_unseen(f"lease {slots.where}/")
    witness.forget_unseen(f"tmp {slots.base}/")
    return dead


def forget_lease(root: Root, layer: str, key: str, witness: Witness) -> None:
    """The observer's memory of a lease stack removed, and of its temporary files."""
    slots = _FileSlots(root.leases_dir())
    witness.forget(f"lease {slots.where}/{layer}/{key}/")
    witness.forget(f"tmp {slots.base / layer / key}/")


def _stat_digest(path: Path) -> str:
    """What changes when a file does, for files whose content is not worth reading."""
    try:
        stat = path.lstat()
    except FileNotFoundError:
        return "gone"
    return digest(f"{stat.st_size} {stat.st_mtime_ns} {stat.st_ino}")


def _lease_dirs(base: Path) -> Iterator[tuple[str, str, Path]]:
    if not base.is_dir():
        return
    for layer_dir in sorted(base.iterdir()):
        if layer_dir.is_dir() and not layer_dir.is_symlink():
            for key_dir in sorted(layer_dir.iterdir()):
                if key_dir.is_dir() and not key_dir.is_symlink():
                    yield layer_dir.name, key_dir.name, key_dir


# --- Modal Dict -------------------------------------------------------------------------------


class DictStore(Protocol):
    """The two operations of ``modal.Dict`` that leases use; a real ``modal.Dict`` is one."""

    def get(self, key: Any, default: Any = None) -> Any: ...

    def put(self, key: Any, value: Any, *, skip_if_exists: bool = False) -> bool: ...


class _DictSlots:
    """Entries ``cachekeeper-lease/<layer>/<key>/<generation>`` holding JSON text.

    Modal drops an entry after 7 days without reads or writes; climbing a stack reads every
    generation, so a stack's entries age together and vanish together.
    """

    PREFIX = "cachekeeper-lease"

    def __init__(self, store: DictStore) -> None:
        self.store = store
        self.where = f"dict {id(store):x}"

    def create(self, name: str, info: LeaseInfo) -> bool:
        return bool(self.store.put(f"{self.PREFIX}/{name}", info.to_json(), skip_if_exists=True))

    def read(self, name: str) -> LeaseInfo | None:
        text = self.store.get(f"{self.PREFIX}/{name}")
        if text is None:
            return None
        try:
            return LeaseInfo.from_json(text)
        except ValueError:  # written by something else: honoured until it has not changed for a TTL
            return LeaseInfo.unreadable(str(text))

    def write(self, name: str, info: LeaseInfo) -> None:
        self.store.put(f"{self.PREFIX}/{name}", info.to_json())

    def top_hint(self, stem: str) -> int:
        return 0  # listing a Dict reads all of it; climbing from the bottom costs one read per build


class ModalDictLeases(_GenerationLeases):
    """Leases kept in a ``modal.Dict``: ``ModalDictLeases(modal.Dict.from_name("cachekeeper-leases",
    create_if_missing=True))``. Any object with ``get`` and ``put(..., skip_if_exists=)`` works."""

    def __init__(self, store: DictStore, ttl: float = DEFAULT_TTL, witness: Witness | None = None) -> None:
        super().__init__(_DictSlots(store), ttl, witness)
