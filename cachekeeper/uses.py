"""Uses: which running processes use which artifacts, so that prune never deletes them.

A server keeps reading its artifacts long after ``activate()`` returned (a batch size compiled
lazily, a snapshot restored), so a use lasts as long as the process: one small file per process
and artifact, ``<root>/.cachekeeper/uses/<layer>/<key>/<host>-<pid>.json``, whose expiry a daemon
thread renews until the process exits. A process that dies stops renewing: its use counts until
it expires, or, on the same host, until its pid is gone. Imports only the standard library: this
runs inside the server's boot.
"""

from __future__ import annotations

import atexit
import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import NamedTuple

from .store import Root, write_atomically
from .store.layout import USES, host_name

# Long against a Volume's background commits (every few seconds) and a busy process's heartbeat:
# a use wrongly thought gone costs a live server its files, one kept too long costs only space.
USE_TTL = 300.0
_RENEW_EVERY = USE_TTL / 4


class UseInfo(NamedTuple):
    owner: str  # host:pid
    since: float
    expires_at: float

    def alive(self, now: float) -> bool:
        return now < self.expires_at and not _process_gone(self.owner)


def users(root: Root, layer: str, key: str, now: float | None = None) -> list[UseInfo]:
    """The live uses of ``key``. An unreadable record counts as live while it is young."""
    now = time.time() if now is None else now
    found = []
    try:
        entries = sorted(root.uses_dir(layer, key).glob("*.json"))
    except OSError:
        return []
    for path in entries:
        info = _read(path)
        if info is None:
            try:
                young = now - path.stat().st_mtime < USE_TTL
            except FileNotFoundError:
                continue
            if young:
                found.append(UseInfo(f"unreadable record {path.name}", now, now + USE_TTL))
        elif info.alive(now):
            found.append(info)
    return found


def forget_expired(root: Root, layer: str, key: str, now: float | None = None) -> None:
    """Remove the records of uses that ended without saying so (a killed process)."""
    now = time.time() if now is None else now
    directory = root.uses_dir(layer, key)
    if not directory.is_dir() or directory.is_symlink():
        return
    for path in directory.glob("*.json"):
        info = _read(path)
        if info is not None and not info.alive(now):
            path.unlink(missing_ok=True)
    try:
        directory.rmdir()
    except OSError:
        pass  # a live use is left, or one was registered in between


def forget_stopped(root: Root, now: float | None = None) -> int:
    """Remove, for every key, the records of uses whose process stopped without saying so, and the
    key directories left empty; how many records were removed.

    The walk only finds the keys: each key's records are judged and removed by ``forget_expired``,
    the one place that asks the liveness rule (``UseInfo.alive``), so that this never decides
    liveness itself. It goes by directory entries and never follows a link: a linked layer or key
    directory is skipped, and so is a key directory holding a link (unknown means keep), so that
    no record is ever read through one. Names that are not a layer's keys are left alone.
    """
    from .errors import CachekeeperError
    from .keys import parse_key

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
            forget_expired(root, layer, entry.name, now)
            removed += len(before - {record.name for record in _entries(Path(entry.path))})
    return removed


def _entries(directory: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(directory) as entries:
            return sorted(entries, key=lambda entry: entry.name)
    except (FileNotFoundError, NotADirectoryError):
        return []


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
    path = root.uses_dir(layer, key) / f"{host_name()}-{os.getpid()}.json"
    _heartbeat.add(path)
    return Registration(path)


class _Heartbeat:
    """One thread per process renews every use it holds; uses held twice are counted."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[Path, int] = {}
        self._since = time.time()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, path: Path) -> None:
        with self._lock:
            if path not in self._held:
                _write(path, self._since)  # raises before anything is held when it cannot be written
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
        # The child has another pid; the parent's records and thread are the parent's.
        self._lock = threading.Lock()
        self._held = {}
        self._since = time.time()
        self._stop = threading.Event()
        self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(_RENEW_EVERY):
            with self._lock:
                for path in self._held:
                    try:
                        _write(path, self._since)
                    except OSError:
                        continue  # a Volume busy for a moment, or a root gone: nothing to renew now


_heartbeat = _Heartbeat()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_heartbeat.forget_after_fork)


def _write(path: Path, since: float) -> None:
    info = {"owner": f"{socket.gethostname()}:{os.getpid()}", "since": since, "expires_at": time.time() + USE_TTL}
    # Rewritten every few minutes for as long as the process lives: no fsync, a lost write is renewed.
    write_atomically(path, json.dumps(info).encode(), durable=False)


def _remove(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass  # a root gone or replaced: the record is gone with it, or expires on its own


def _read(path: Path) -> UseInfo | None:
    try:
        data = json.loads(path.read_bytes())
        return UseInfo(str(data["owner"]), float(data["since"]), float(data["expires_at"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _process_gone(owner: str) -> bool:
    """True only when the owner ran on this host and its process no longer exists."""
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
