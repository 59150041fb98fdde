"""A read-only server's uses, registered in the server manifest and renewed while it lives.

See manifest/served.py. One daemon thread renews every row this process holds, as uses.py renews
use files; the rows go when the process exits normally, and lapse after ``USE_TTL`` when it dies.
A manifest that fails while renewing costs the protection, never the server: the thread goes on.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
import uuid
from typing import TYPE_CHECKING

from ..store import builder_id
from ..uses import USE_TTL

if TYPE_CHECKING:
    from ..manifest import Manifest

logger = logging.getLogger("cachekeeper")


_held: list[ServedUses] = []


def release_all() -> None:
    """End every use this process registered in a manifest (uses.release_all's twin)."""
    for each in list(_held):
        each.release()


class ServedUses:
    """This process's rows in one server manifest."""

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest
        self._tokens: list[str] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        _held.append(self)

    def register(self, layer: str, key: str) -> str:
        """Record that this process serves ``key`` until it exits; the row's token. Raises what the
        manifest raises: the boot then knows its use is not protected."""
        from ..manifest import served

        token = uuid.uuid4().hex
        served.add(self.manifest, token, layer, key, builder_id(), time.time() + USE_TTL)
        with self._lock:
            self._tokens.append(token)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="cachekeeper served", daemon=True)
                self._thread.start()
                atexit.register(self.release)
        return token

    def drop(self, token: str) -> None:
        """This process no longer uses what ``token`` names."""
        from ..manifest import served

        with self._lock:
            if token not in self._tokens:
                return
            self._tokens.remove(token)
        try:
            served.drop(self.manifest, [token])
        except Exception as error:  # it lapses on its own
            logger.warning("cachekeeper: could not remove a use from the manifest: %s", error)

    def release(self) -> None:
        from ..manifest import served

        self._stop.set()
        with self._lock:
            tokens, self._tokens = self._tokens, []
        if self in _held:
            _held.remove(self)
        if not tokens:
            return
        try:
            served.drop(self.manifest, tokens)
        except Exception as error:  # they lapse on their own
            logger.warning("cachekeeper: could not remove this server's uses from the manifest: %s", error)

    def _run(self) -> None:
        from ..manifest import served

        while not self._stop.wait(USE_TTL / 4):
            with self._lock:
                tokens = list(self._tokens)
            try:
                served.renew(self.manifest, tokens, time.time() + USE_TTL)
            except Exception as error:  # a database blip: the next renewal may succeed
                logger.warning("cachekeeper: renewing this server's uses in the manifest failed: %s", error)
