"""Build leases: at most one process builds a given key at a time, across processes and machines.

Three mechanisms share one interface (``Leases``: ``acquire`` and ``holder``):

- ``FileLeases``: files in the cache root, for local disks and NFS;
- ``ModalDictLeases``: entries of a ``modal.Dict``, for containers sharing a Modal Volume (a
  Volume has no locking at all: each container sees its own copy until it reloads);
- ``DbLeases``: rows of the manifest's ``lease`` table, when the manifest is a server database.

A holder renews its lease from a daemon thread every third of the TTL. A holder that dies stops
renewing; once the lease has expired, or on the same machine once its process is gone, the next
process may take it over.

**Generations.** Files and Dict entries offer one atomic operation, *create if absent*
(``os.link`` / ``Dict.put(..., skip_if_exists=True)``): no compare-and-swap, no conditional
delete. So a key's lease is a stack of generations ``1, 2, 3, ...``; the top one is the lease.
Taking it means creating generation ``top + 1`` after seeing ``top`` dead (expired, released,
or its process gone). Create-if-absent lets exactly one process create each generation, and
generations are never removed while anyone may still climb them, so two live holders would need
someone to have seen the older one dead: a holder that stalls for longer than its TTL loses its
lease, as with any lease, and finds out at its next renewal or ``held()`` check (the runtime
checks before it publishes). Renewals and releases overwrite only the holder's own generation,
which no longer matters once a higher one exists. Expiry compares the holder's clock with the
reader's: clocks must agree to well within the TTL.

On NFS, ``link`` and exclusive create are atomic (NFSv3 and later), but a client may serve a
lease file's attributes from its cache for up to ``acregmax`` (60 s by default): keep the TTL
several times longer than that (``lease_ttl=300``) or mount with ``lookupcache=positive``.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .store import Root, builder_id

if TYPE_CHECKING:
    from .manifest import Manifest

logger = logging.getLogger("cachekeeper")

DEFAULT_TTL = 60.0
# A dead lease is removed by prune once its key is published, or after this long in any case:
# generations must not vanish while a process may still be climbing them.
STALE_AFTER = 86400.0
LEASES_DIR = "leases"


@dataclass(frozen=True, slots=True)
class LeaseInfo:
    """One holder's claim: who, a random token, and until when (Unix seconds; once released, the
    time it was released)."""

    owner: str  # host:pid, for people
    token: str
    expires_at: float
    process: str = ""  # where the owner's pid can be checked; see this_process()

    def alive(self, now: float) -> bool:
        return now < self.expires_at and not process_gone(self.process)

    def to_json(self) -> str:
        return json.dumps(
            {"owner": self.owner, "token": self.token, "expires_at": self.expires_at, "process": self.process}
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> LeaseInfo:
        """Raises ValueError when ``text`` is not a lease record."""
        try:
            data = json.loads(text)
            return cls(str(data["owner"]), str(data["token"]), float(data["expires_at"]), str(data.get("process", "")))
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"not a lease record: {error}") from None


class Leases(Protocol):
    """What the runtime, check and prune need of a lease mechanism."""

    ttl: float

    def acquire(self, layer: str, key: str) -> Lease | None:
        """Take the lease for ``key``; None while another live process holds it."""

    def holder(self, layer: str, key: str) -> LeaseInfo | None:
        """The live holder of ``key``'s lease, or None."""


# --- whether a holder's process still exists --------------------------------------------------


def this_process() -> str:
    """Where this process's pid means something: boot id, pid namespace, pid and start time.

    Containers on one kernel share the boot id but not the pid namespace, and a pid is reused
    only with another start time, so a lease from this very namespace can be checked exactly.
    Empty where /proc cannot tell (not Linux): such leases only expire.
    """
    return _process_identity(os.getpid())


@functools.cache
def _process_identity(pid: int) -> str:
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""
    started = _start_time(pid)
    return f"{boot}|{namespace}|{pid}|{started}" if started else ""


def _start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()  # the command name may contain spaces and parentheses
    return fields[19] if len(fields) > 19 else None  # field 22 of proc(5): start time in ticks


def process_gone(process: str) -> bool:
    """True only when ``process`` ran in this pid namespace and no longer runs."""
    parts = process.split("|")
    mine = this_process().split("|")
    if len(parts) != 4 or len(mine) != 4 or parts[:2] != mine[:2] or not parts[2].isdigit():
        return False
    return _start_time(int(parts[2])) != parts[3]


# --- a held lease ---------------------------------------------------------------------------


class _Keeper(Protocol):
    """The mechanism's side of one held lease."""

    def holds(self, info: LeaseInfo) -> bool: ...

    def renew(self, info: LeaseInfo, renewed: LeaseInfo) -> bool: ...

    def release(self, info: LeaseInfo) -> None: ...


class Lease:
    """A lease this process holds; a daemon thread renews it until ``release()``."""

    def __init__(self, name: str, info: LeaseInfo, ttl: float, keeper: _Keeper) -> None:
        self.name = name
        self.info = info
        self._ttl = ttl
        self._keeper = keeper
        self._lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._heartbeat, name=f"lease {name}", daemon=True)
        self._thread.start()

    def held(self) -> bool:
        """Whether this process still holds the lease: asks the mechanism, not only memory."""
        if self._stop.is_set() or self._lost.is_set() or time.time() >= self.info.expires_at:
            return False
        try:
            return self._keeper.holds(self.info)
        except Exception as error:  # an unreachable mechanism cannot vouch for us
            logger.warning("cachekeeper: cannot confirm the lease %s: %s", self.name, error)
            return False

    def _heartbeat(self) -> None:
        while not self._stop.wait(self._ttl / 3):
            renewed = replace(self.info, expires_at=time.time() + self._ttl)
            try:
                still_ours = self._keeper.renew(self.info, renewed)
            except Exception as error:  # a network blip: try again until the lease would expire
                if time.time() < self.info.expires_at:
                    logger.warning("cachekeeper: renewing the lease %s failed, retrying: %s", self.name, error)
                    continue
                still_ours = False
            if not still_ours:
                logger.warning("cachekeeper: lost the lease %s: another process took it over", self.name)
                self._lost.set()
                return
            self.info = renewed

    def release(self) -> None:
        self._stop.set()
        self._thread.join()
        if self._lost.is_set():
            return
        try:
            self._keeper.release(self.info)
        except Exception as error:  # it expires on its own
            logger.warning("cachekeeper: could not release the lease %s (it will expire): %s", self.name, error)


# --- generations over create-if-absent storage ------------------------------------------------


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
        path = self._path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        try:
            _write_durably(temporary, info.to_json().encode())
            # A link appears whole and never replaces an existing file: readers never see a
            # half-written lease, and only one creator wins.
            os.link(temporary, path)
            return True
        except FileExistsError:
            return False
        finally:
            temporary.unlink(missing_ok=True)

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
        path = self._path(name)
        temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        try:
            _write_durably(temporary, info.to_json().encode())
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)

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
        super().__init__(_FileSlots(root.state_dir / LEASES_DIR, ttl), ttl)
        self.root = root


def _write_durably(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


@dataclass(frozen=True, slots=True)
class LeaseCleanup:
    leases: int  # keys whose dead leases were removed
    temporary_files: int  # leftovers of writers killed mid-write


def clean_file_leases(
    root: Root, published: Callable[[str, str], bool], *, now: float | None = None
) -> LeaseCleanup:
    """Remove dead lease stacks whose key is published or that died long ago (see STALE_AFTER).

    A live or recently dead stack is never touched: someone may be climbing it right now.
    """
    now = time.time() if now is None else now
    slots = _FileSlots(root.state_dir / LEASES_DIR, DEFAULT_TTL)
    removed = temporary = 0
    for layer, key, directory in _lease_dirs(slots.base):
        for leftover in directory.glob(".*.tmp"):
            if _older_than(leftover, STALE_AFTER / 24, now):  # a writer needs microseconds, not an hour
                leftover.unlink(missing_ok=True)
                temporary += 1
        _, top = _GenerationLeases(slots, DEFAULT_TTL)._top(f"{layer}/{key}")
        if top is None or top.alive(now):
            continue
        if published(layer, key) or top.expires_at < now - STALE_AFTER:
            shutil.rmtree(directory, ignore_errors=True)
            removed += 1
    return LeaseCleanup(removed, temporary)


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


# --- the manifest database --------------------------------------------------------------------


class DbLeases:
    """Leases as rows of the manifest's ``lease`` table, one per key.

    A server database gives what files and Dicts lack, a conditional update: a dead lease is
    taken over by ``UPDATE ... WHERE token = <the dead holder's token>``, which exactly one
    process can win on SQLite and on PostgreSQL alike.
    """

    def __init__(self, manifest: Manifest, ttl: float = DEFAULT_TTL) -> None:
        self.manifest = manifest
        self.ttl = ttl

    def holder(self, layer: str, key: str) -> LeaseInfo | None:
        info = _row_lease(self.manifest, layer, key)
        return info if info is not None and info.alive(time.time()) else None

    def acquire(self, layer: str, key: str) -> Lease | None:
        mine = LeaseInfo(builder_id(), uuid.uuid4().hex, time.time() + self.ttl, this_process())
        for _ in range(8):  # each turn follows a change by another process; a few always suffice
            current = _row_lease(self.manifest, layer, key)
            if current is None:
                taken = self.manifest.insert_lease(layer, key, asdict(mine))
            elif current.alive(time.time()):
                return None
            else:
                taken = self.manifest.replace_lease(layer, key, current.token, asdict(mine))
            if taken:
                return Lease(f"{layer}/{key}", mine, self.ttl, _DbKeeper(self.manifest, layer, key))
        return None


@dataclass(frozen=True, slots=True)
class _DbKeeper:
    manifest: Manifest
    layer: str
    key: str

    def holds(self, info: LeaseInfo) -> bool:
        current = _row_lease(self.manifest, self.layer, self.key)
        return current is not None and current.token == info.token

    def renew(self, info: LeaseInfo, renewed: LeaseInfo) -> bool:
        return self.manifest.replace_lease(self.layer, self.key, info.token, asdict(renewed))

    def release(self, info: LeaseInfo) -> None:
        self.manifest.drop_lease(self.layer, self.key, info.token)


def _row_lease(manifest: Manifest, layer: str, key: str) -> LeaseInfo | None:
    fields = manifest.lease(layer, key)
    return None if fields is None else LeaseInfo(**fields)


def leases_for(root: Root, manifest: Manifest | None = None, ttl: float = DEFAULT_TTL) -> Leases:
    """The mechanism that builders of ``root`` use by default: the manifest's table when the
    manifest is a server database, files in the root otherwise."""
    if manifest is not None and manifest.is_server:
        return DbLeases(manifest, ttl)
    return FileLeases(root, ttl)
