"""Leases over storage that can only *create if absent*: files in a root, entries of a Modal Dict.

Files and Dict entries offer one atomic operation, create-if-absent (``os.link`` /
``Dict.put(..., skip_if_exists=True)``): no compare-and-swap, no conditional delete. So a key's
lease is a stack of generations ``1, 2, 3, ...``; the top one is the lease. Taking it means
creating generation ``top + 1`` after seeing ``top`` dead (expired, released, or its process gone).
Create-if-absent lets exactly one process create each generation, and generations are never
removed while anyone may still climb them, so two live holders would need someone to have seen
the older one dead. Renewals and releases overwrite only the holder's own generation, which no
longer matters once a higher one exists. Expiry compares the holder's clock with the reader's:
clocks must agree to well within the TTL.

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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from ..processes import this_process
from ..store import Root, builder_id, write_atomically
from .lease import DEFAULT_TTL, STALE_AFTER, Lease, LeaseInfo


class _Slots(Protocol):
    """Named records with an atomic create-if-absent: all that generation leases need."""

    def create(self, name: str, info: LeaseInfo) -> bool: ...

    def read(self, name: str) -> LeaseInfo | None: ...

    def write(self, name: str, info: LeaseInfo) -> None: ...

    def top_hint(self, stem: str) -> int:
        """A generation of ``stem`` known to exist, to start climbing from; 0 when none is known."""


def _slot(stem: str, generation: int) -> str:
    return f"{stem}/{generation}"


class _GenerationLeases:
    def __init__(self, slots: _Slots, ttl: float) -> None:
        self._slots = slots
        self.ttl = ttl

    def holder(self, layer: str, key: str) -> LeaseInfo | None:
        _, top = self._top(f"{layer}/{key}")
        return top if top is not None and top.alive(time.time()) else None

    def acquire(self, layer: str, key: str) -> Lease | None:
        stem = f"{layer}/{key}"
        generation, top = self._top(stem)
        while True:
            if top is not None and top.alive(time.time()):
                return None
            mine = LeaseInfo(builder_id(), uuid.uuid4().hex, time.time() + self.ttl, this_process())
            if self._slots.create(_slot(stem, generation + 1), mine):
                keeper = _GenerationKeeper(self._slots, stem, generation + 1)
                return Lease(stem, mine, self.ttl, keeper)
            generation, top = self._top(stem, generation + 1)  # someone else took that generation

    def _top(self, stem: str, start: int | None = None) -> tuple[int, LeaseInfo | None]:
        generation = self._slots.top_hint(stem) if start is None else start
        top = self._slots.read(_slot(stem, generation)) if generation else None
        while (above := self._slots.read(_slot(stem, generation + 1))) is not None:
            generation, top = generation + 1, above
        return generation, top


@dataclass(frozen=True, slots=True)
class _GenerationKeeper:
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
            # Expired as of now: prune can tell a lease released long ago from one released just now.
            self.slots.write(_slot(self.stem, self.generation), replace(info, expires_at=time.time()))


# --- files ------------------------------------------------------------------------------------

_GENERATION_FILE = re.compile(r"(\d+)\.lease")


class _FileSlots:
    """``<root>/.cachekeeper/leases/<layer>/<key>/<generation>.lease``."""

    def __init__(self, base: Path, ttl: float) -> None:
        self.base = base
        self.ttl = ttl

    def _path(self, name: str) -> Path:
        stem, _, generation = name.rpartition("/")
        return self.base / stem / f"{generation}.lease"

    def create(self, name: str, info: LeaseInfo) -> bool:
        # Readers never see a half-written lease, and only one creator wins.
        return write_atomically(self._path(name), info.to_json().encode(), exclusive=True)

    def read(self, name: str) -> LeaseInfo | None:
        path = self._path(name)
        try:
            return LeaseInfo.from_json(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            # Damaged by something outside cachekeeper: honour it for a TTL from its last change.
            try:
                return LeaseInfo("unreadable", "", path.stat().st_mtime + self.ttl)
            except FileNotFoundError:
                return None

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

    def __init__(self, root: Root, ttl: float = DEFAULT_TTL) -> None:
        super().__init__(_FileSlots(root.leases_dir(), ttl), ttl)
        self.root = root


def dead_file_leases(root: Root, published: Callable[[str, str], bool], *, now: float) -> list[tuple[str, str]]:
    """(layer, key) of the dead lease stacks that may be removed: their key is published, or they
    died long ago (see STALE_AFTER). A live or recently dead stack is never among them: someone may
    be climbing it right now."""
    slots = _FileSlots(root.leases_dir(), DEFAULT_TTL)
    dead = []
    for layer, key, _ in _lease_dirs(slots.base):
        _, top = _GenerationLeases(slots, DEFAULT_TTL)._top(f"{layer}/{key}")
        if top is not None and not top.alive(now) and (published(layer, key) or top.expires_at < now - STALE_AFTER):
            dead.append((layer, key))
    return dead


def lease_temporary_files(root: Root, *, now: float) -> list[Path]:
    """Lease files being written when their writer died: a writer needs microseconds, not an hour."""
    return [
        leftover
        for _, _, directory in _lease_dirs(root.leases_dir())
        for leftover in directory.glob(".*.tmp")
        if _older_than(leftover, STALE_AFTER / 24, now)
    ]


def _lease_dirs(base: Path) -> Iterator[tuple[str, str, Path]]:
    if not base.is_dir():
        return
    for layer_dir in sorted(base.iterdir()):
        if layer_dir.is_dir() and not layer_dir.is_symlink():
            for key_dir in sorted(layer_dir.iterdir()):
                if key_dir.is_dir() and not key_dir.is_symlink():
                    yield layer_dir.name, key_dir.name, key_dir


def _older_than(path: Path, seconds: float, now: float) -> bool:
    try:
        return now - path.lstat().st_mtime > seconds
    except FileNotFoundError:
        return False


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

    def create(self, name: str, info: LeaseInfo) -> bool:
        return bool(self.store.put(f"{self.PREFIX}/{name}", info.to_json(), skip_if_exists=True))

    def read(self, name: str) -> LeaseInfo | None:
        text = self.store.get(f"{self.PREFIX}/{name}")
        if text is None:
            return None
        try:
            return LeaseInfo.from_json(text)
        except ValueError:  # written by something else: a record nobody can renew is dead
            return LeaseInfo("unreadable", "", 0.0)

    def write(self, name: str, info: LeaseInfo) -> None:
        self.store.put(f"{self.PREFIX}/{name}", info.to_json())

    def top_hint(self, stem: str) -> int:
        return 0  # listing a Dict reads all of it; climbing from the bottom costs one read per build


class ModalDictLeases(_GenerationLeases):
    """Leases kept in a ``modal.Dict``: ``ModalDictLeases(modal.Dict.from_name("cachekeeper-leases",
    create_if_missing=True))``. Any object with ``get`` and ``put(..., skip_if_exists=)`` works."""

    def __init__(self, store: DictStore, ttl: float = DEFAULT_TTL) -> None:
        super().__init__(_DictSlots(store), ttl)
