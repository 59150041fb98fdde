"""Build leases: at most one process builds a given key at a time.

A lease is a file created with O_EXCL under ``<root>/.cachekeeper/leases/``, renewed by a
heartbeat while its holder lives. A holder that dies stops renewing; once the lease has expired
(or, on the same host, once its process is gone) the next process may take it over.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from .store import Root, builder_id, write_durably

DEFAULT_TTL = 60.0


@dataclass(frozen=True, slots=True)
class LeaseInfo:
    owner: str  # host:pid
    token: str
    expires_at: float

    def alive(self, now: float) -> bool:
        return now < self.expires_at and not _owner_gone(self.owner)


def _owner_gone(owner: str) -> bool:
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


def _read(path: Path) -> LeaseInfo | None:
    try:
        data = json.loads(path.read_bytes())
        return LeaseInfo(str(data["owner"]), str(data["token"]), float(data["expires_at"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


class Lease:
    """A lease this process holds; a daemon thread renews it until ``release()``."""

    def __init__(self, path: Path, info: LeaseInfo, ttl: float) -> None:
        self.path = path
        self.info = info
        self._ttl = ttl
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._heartbeat, name=f"lease {path.name}", daemon=True)
        self._thread.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(self._ttl / 3):
            current = _read(self.path)
            if current is None or current.token != self.info.token:
                return  # taken over after we failed to renew in time; nothing left to renew
            renewed = LeaseInfo(self.info.owner, self.info.token, time.time() + self._ttl)
            temporary = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex}.tmp")
            try:
                write_durably(temporary, _encode(renewed))
                os.replace(temporary, self.path)
            except OSError:
                temporary.unlink(missing_ok=True)
                continue
            self.info = renewed

    def release(self) -> None:
        self._stop.set()
        self._thread.join()
        current = _read(self.path)
        if current is not None and current.token == self.info.token:
            self.path.unlink(missing_ok=True)


def _encode(info: LeaseInfo) -> bytes:
    return json.dumps({"owner": info.owner, "token": info.token, "expires_at": info.expires_at}).encode()


class FileLeases:
    """Leases kept as files in a cache root: local disks and shared file systems."""

    def __init__(self, root: Root, ttl: float = DEFAULT_TTL) -> None:
        self.root = root
        self.ttl = ttl

    def holder(self, layer: str, key: str) -> LeaseInfo | None:
        """The live holder of ``key``'s lease, or None."""
        info = _read(self.root.lease_path(layer, key))
        return info if info is not None and info.alive(time.time()) else None

    def acquire(self, layer: str, key: str) -> Lease | None:
        """Take the lease for ``key``; None while another live process holds it."""
        path = self.root.lease_path(layer, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            info = LeaseInfo(builder_id(), uuid.uuid4().hex, time.time() + self.ttl)
            try:
                descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                if not self._clear_if_expired(path):
                    return None
                continue
            try:
                os.write(descriptor, _encode(info))
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
            return Lease(path, info, self.ttl)
        return None

    def _clear_if_expired(self, path: Path) -> bool:
        """Move an expired lease aside. True when the path is free to be taken again."""
        seen = _read(path)
        now = time.time()
        if seen is not None and seen.alive(now):
            return False
        if seen is None and _younger_than(path, self.ttl, now):
            return False  # being written right now, or unreadable only for a moment
        aside = path.with_name(f".{path.name}.{uuid.uuid4().hex}.expired")
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            return True
        moved = _read(aside)
        if seen is not None and moved is not None and moved.token != seen.token:
            # Someone else cleared the expired lease and took a fresh one in between: put it back.
            try:
                os.link(aside, path)
            except FileExistsError:
                pass
            aside.unlink(missing_ok=True)
            return False
        aside.unlink(missing_ok=True)
        return True


def _younger_than(path: Path, seconds: float, now: float) -> bool:
    try:
        return now - path.stat().st_mtime < seconds
    except FileNotFoundError:
        return False
