"""A lease and its holder: what every lease mechanism stores, and the lease a process holds.

A holder renews its lease from a daemon thread every third of the TTL. A holder that dies stops
renewing; once the lease has expired, or on the same machine once its process is gone, the next
process may take it over. A holder that stalls past its TTL loses the lease and finds out at its
next renewal or ``held()`` check (the runtime checks before it publishes).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, replace
from typing import Protocol, runtime_checkable

from ..processes import process_gone

logger = logging.getLogger("cachekeeper")

DEFAULT_TTL = 60.0
# A dead lease is removed by prune once its key is published, or after this long in any case:
# generations must not vanish while a process may still be climbing them.
STALE_AFTER = 86400.0


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


@runtime_checkable
class Leases(Protocol):
    """What the runtime, check and prune need of a lease mechanism."""

    ttl: float

    def acquire(self, layer: str, key: str) -> Lease | None:
        """Take the lease for ``key``; None while another live process holds it."""

    def holder(self, layer: str, key: str) -> LeaseInfo | None:
        """The live holder of ``key``'s lease, or None."""


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
