"""The one fake in the project: in-memory stand-ins for the Modal objects cachekeeper touches.

Modal's servers cannot be reached from the tests. cachekeeper.modal uses only ``reload()`` and
``commit()`` of a Volume and ``get()`` / ``put(..., skip_if_exists=)`` of a Dict; these doubles
keep those semantics (an atomic create-if-absent; reload failing while files are open) and
record what was called.
"""

from __future__ import annotations

import threading
from typing import Any


class MemoryDict:
    """``modal.Dict``'s get and put, atomic per call as on Modal's server."""

    def __init__(self) -> None:
        self._data: dict[Any, Any] = {}
        self._lock = threading.Lock()

    def get(self, key: Any, default: Any = None) -> Any:
        with self._lock:
            return self._data.get(key, default)

    def put(self, key: Any, value: Any, *, skip_if_exists: bool = False) -> bool:
        with self._lock:
            if skip_if_exists and key in self._data:
                return False
            self._data[key] = value
            return True

    def connection(self) -> DictConnection:
        """A client of this Dict that can lose its connection, as a stalled container would."""
        return DictConnection(self)


class DictConnection:
    def __init__(self, server: MemoryDict) -> None:
        self.server = server
        self.reachable = True

    def _check(self) -> None:
        if not self.reachable:
            raise ConnectionError("Modal server unreachable")

    def get(self, key: Any, default: Any = None) -> Any:
        self._check()
        return self.server.get(key, default)

    def put(self, key: Any, value: Any, *, skip_if_exists: bool = False) -> bool:
        self._check()
        return self.server.put(key, value, skip_if_exists=skip_if_exists)


class MemoryVolume:
    """``modal.Volume``'s reload and commit. ``open_files`` makes that many reloads fail the way
    Modal's do while the container has files open on the Volume."""

    def __init__(self, *, open_files: int = 0, on_commit: Any = None) -> None:
        self.calls: list[str] = []
        self.open_files = open_files
        self.on_commit = on_commit

    def reload(self) -> None:
        self.calls.append("reload")
        if self.open_files:
            self.open_files -= 1
            raise RuntimeError("there are open files preventing the operation: path /vol/compile/app.log is open")

    def commit(self) -> None:
        self.calls.append("commit")
        if self.on_commit is not None:
            self.on_commit()
