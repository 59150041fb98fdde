"""Uses: which running processes use which artifacts, so that prune never deletes them.

A server keeps reading its artifacts long after ``activate()`` returned (a batch size compiled
lazily, a snapshot restored), so a use lasts as long as the process: one small file per process
and artifact, ``<root>/.cachekeeper/uses/<layer>/<key>/<token>.json``, named by the process's
random token (two servers that are both pid 1 on one hostname get two records) and carrying its
identity (see ``processes``). A daemon thread rewrites it every ``_RENEW_EVERY`` seconds with a
new beat count, so that its content changes for as long as the process lives.

A use ends when its process releases it or exits. One that ended without saying so (a killed
process) is dead when its process is proven gone (same machine and pid namespace), or once its
record has not changed for ``USE_TTL`` of the *observer's* own time (see ``liveness``): no time
the writer recorded is compared with the observer's clock. Imports only the standard library:
this runs inside the server's boot.
"""

from __future__ import annotations

import atexit
import json
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import CachekeeperError
from .keys import parse_key
from .processes import ProcessIdentity, process_gone, this_process, this_token
from .store import Root, write_atomically
from .store.layout import USES
from .values import Value

if TYPE_CHECKING:
    from .liveness import Witness

# Long against a Volume's background commits (every few seconds) and a busy process's heartbeat:
# a use wrongly thought gone costs a live server its files, one kept too long costs only space.
USE_TTL = 300.0
_RENEW_EVERY = USE_TTL / 4


class UseInfo(Value):
    owner: str  # host:pid, for people
    process: ProcessIdentity
    since: float  # the writer's clock: for people only


def users(root: Root, layer: str, key: str, witness: Witness | None = None) -> list[UseInfo]:
    """The uses of ``key`` that may still be live: not proven gone, and changed within ``USE_TTL``
    of the observer's time as ``witness`` remembers it (default: a memory of this one look, in which
    every record is young). An unreadable record counts the same way: until it stops changing."""
    return [info for info, live, _ in _judged(root, layer, key, witness) if live]


def dead_records(root: Root, layer: str, key: str, witness: Witness | None = None) -> list[Path]:
    """The records of ``key``'s uses that ended without saying so (a killed process): proven gone,
    or unchanged for ``USE_TTL`` of the observer's time."""
    return [path for _, live, path in _judged(root, layer, key, witness) if not live]


def forget_expired(root: Root, layer: str, key: str, witness: Witness | None = None) -> None:
    """Remove the records of uses that ended without saying so (a killed process)."""
    directory = root.uses_dir(layer, key)
    if not directory.is_dir() or directory.is_symlink():
        return
    for path in dead_records(root, layer, key, witness):
        path.unlink(missing_ok=True)
    try:
        directory.rmdir()
    except OSError:
        return  # a live use is left, or one was registered in between
    if witness is not None:
        witness.forget(scope(root, layer, key))


def forget_stopped(root: Root, witness: Witness | None = None) -> int:
    """Remove, for every key, the records of uses whose process stopped without saying so, and the
    key directories left empty; how many records were removed.

    The walk only finds the keys: each key's records are judged and removed by ``forget_expired``,
    the one place that asks the liveness rule. It goes by directory entries and never follows a
    link: a linked layer or key directory is skipped, and so is a key directory holding a link
    (unknown means keep), so that no record is ever read through one. Names that are not a layer's
    keys are left alone.
    """
    removed = 0
    for layer, layer_dir in root.state_layers(USES):
        for entry in _entries(layer_dir):
            try:
                if not entry.is_dir(follow_symlinks=False) or parse_key(entry.name)[0] != layer:
                    continue
            except CachekeeperError:
                continue  # not a key: not ours to judge
            records = _entries(Path(entry.path))
            if any(record.is_symlink() for record in records):
                continue
            before = {record.name for record in records if record.name.endswith(".json")}
            forget_expired(root, layer, entry.name, witness)
            removed += len(before - {record.name for record in _entries(Path(entry.path))})
    return removed


def _entries(directory: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(directory) as entries:
            return sorted(entries, key=lambda entry: entry.name)
    except (FileNotFoundError, NotADirectoryError):
        return []


def scope(root: Root, layer: str, key: str) -> str:
    """What a witness calls the use records of ``key``: ``use <root>/<layer>/<key>/<record>``."""
    return f"use {root.path}/{layer}/{key}/"


def _judged(root: Root, layer: str, key: str, witness: Witness | None) -> list[tuple[UseInfo, bool, Path]]:
    """Every record of ``key``'s uses, whether it may be live, and its file."""
    from .liveness import Memory, digest, record_bytes  # only readers judge: a boot never imports it

    witness = witness or Memory()
    try:
        entries = sorted(root.uses_dir(layer, key).glob("*.json"))
    except OSError:
        return []
    where = scope(root, layer, key)
    records: list[tuple[UseInfo, str | None, Path]] = []  # (record, its digest unless proven gone, file)
    for path in entries:
        content = record_bytes(path)
        if content is None:
            continue  # released in between
        info = _parse(content, path.name)
        records.append((info, None if process_gone(info.process) else digest(content), path))
    ages = witness.ages({where + path.name: value for _, value, path in records if value is not None}, scope=where)
    return [(info, value is not None and ages[where + path.name] < USE_TTL, path) for info, value, path in records]


class Registration:
    """This process's use of one artifact; ``release()`` ends it before the process does."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            _heartbeat.drop(self.path)


def release_all() -> None:
    """End every use this process holds: for a process that lives on after it stopped serving."""
    _heartbeat.drop_all()


def register(root: Root, layer: str, key: str) -> Registration:
    """Record that this process uses ``key`` until it exits (or ``release()``)."""
    path = root.uses_dir(layer, key) / f"{this_token()}.json"
    _heartbeat.add(path)
    return Registration(path)


def mine(info: UseInfo) -> bool:
    """Whether ``info`` is a use of this very process."""
    return info.process.token == this_token()


class _Heartbeat:
    """One thread per process renews every use it holds; uses held twice are counted."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[Path, int] = {}
        self._since = time.time()
        self._beat = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, path: Path) -> None:
        with self._lock:
            if path not in self._held:
                self._write(path)  # raises before anything is held when it cannot be written
            self._held[path] = self._held.get(path, 0) + 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="cachekeeper uses", daemon=True)
                self._thread.start()
                atexit.register(self._exit)

    def drop(self, path: Path) -> None:
        # Under the lock: the heartbeat must not write a use back after it was released.
        with self._lock:
            count = self._held.get(path, 0) - 1
            if count > 0:
                self._held[path] = count
                return
            self._held.pop(path, None)
            _remove(path)

    def _exit(self) -> None:
        self._stop.set()
        self.drop_all()

    def drop_all(self) -> None:
        with self._lock:
            held, self._held = list(self._held), {}
            for path in held:
                _remove(path)

    def forget_after_fork(self) -> None:
        # The child is another process, with another token; the parent's records and thread are the parent's.
        self._lock = threading.Lock()
        self._held = {}
        self._since = time.time()
        self._beat = 0
        self._stop = threading.Event()
        self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(_RENEW_EVERY):
            with self._lock:
                self._beat += 1  # the record must change for observers to see this process alive
                for path in self._held:
                    try:
                        self._write(path)
                    except OSError:
                        continue  # a Volume busy for a moment, or a root gone: nothing to renew now

    def _write(self, path: Path) -> None:
        me = this_process()
        info = {
            "owner": f"{me.host}:{me.pid}",
            "process": str(me),
            "since": self._since,
            "beat": self._beat,
            "renewed_at": time.time(),  # for people: no observer compares it with its own clock
        }
        # Rewritten every few minutes for as long as the process lives: no fsync, a lost write is renewed.
        write_atomically(path, json.dumps(info).encode(), durable=False)


_heartbeat = _Heartbeat()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_heartbeat.forget_after_fork)


def _remove(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass  # a root gone or replaced: the record is gone with it, or expires on its own


def _parse(content: bytes, name: str) -> UseInfo:
    try:
        data = json.loads(content)
        return UseInfo(str(data["owner"]), ProcessIdentity.parse(str(data.get("process", ""))), float(data["since"]))
    except (ValueError, KeyError, TypeError):
        return UseInfo(f"unreadable record {name}", ProcessIdentity.parse(""), 0.0)
