"""A lease and its holder: what every lease mechanism stores, and the lease a process holds.

A holder renews its lease from a daemon thread every third of the TTL; each renewal changes the
record (a new beat and expiry). A lease is dead when its holder released it, when its holder is
proven gone (same machine and pid namespace, see ``processes``), or once its record has not
changed for the TTL of the *observer's* own time (see ``liveness``): the expiry the holder wrote is
its own clock's, and no other process compares it with theirs. A holder that stalls past its TTL
can then be taken over; it finds out at its next renewal or ``held()`` check (the runtime checks
before it publishes) and publishes nothing.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Protocol, runtime_checkable

from ..liveness import Witness, digest
from ..processes import process_gone
from ..values import Value

logger = logging.getLogger("cachekeeper")

DEFAULT_TTL = 60.0
# A dead lease is removed by prune once its key is published, or once it has been dead this long
# (the observer's time): generations must not vanish while a process may still be climbing them.
STALE_AFTER = 86400.0


class LeaseInfo(Value):
    """One holder's claim: who, a random token, and until when by the holder's own clock."""

    owner: str  # host:pid, for people
    token: str
    expires_at: float  # the holder's clock: for the holder and for people, never compared by others
    process: str = ""  # the holder's identity (processes.ProcessIdentity), to prove it gone
    ttl: float = 0.0  # how long the holder may go without renewing; 0: the observer's own TTL
    beat: int = 0  # renewals so far: every renewal changes the record
    released: bool = False  # released by its holder: dead at once

    def to_json(self) -> str:
        return json.dumps(
            {
                "owner": self.owner,
                "token": self.token,
                "expires_at": self.expires_at,
                "process": self.process,
                "ttl": self.ttl,
                "beat": self.beat,
                "released": self.released,
            }
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> LeaseInfo:
        """Raises ValueError when ``text`` is not a lease record."""
        try:
            data = json.loads(text)
            return cls(
                str(data["owner"]),
                str(data["token"]),
                float(data["expires_at"]),
                str(data.get("process", "")),
                float(data.get("ttl", 0.0)),
                int(data.get("beat", 0)),
                data.get("released", False) is True,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise ValueError(f"not a lease record: {error}") from None

    @classmethod
    def unreadable(cls, content: bytes | str) -> LeaseInfo:
        """A lease record that cannot be read: judged like any other, by whether it changes."""
        return cls("unreadable", f"unreadable {digest(content)}", 0.0)


def judge(info: LeaseInfo, thing: str, scope: str, witness: Witness, ttl: float) -> tuple[bool, float]:
    """(whether the lease ``info`` may be live, how long it has been as it is by the observer's
    clock). ``thing`` names the record for ``witness``; ``ttl`` is the observer's own, used when the
    record does not say its holder's."""
    age = witness.ages({thing: digest(info.to_json())}, scope=scope)[thing]
    if info.released or process_gone(info.process):
        return False, age
    return age < (info.ttl if info.ttl > 0 else ttl), age


@runtime_checkable
class Leases(Protocol):
    """What the runtime, check and prune need of a lease mechanism."""

    ttl: float

    def acquire(self, layer: str, key: str) -> Lease | None:
        """Take the lease for ``key``; None while another live process holds it."""

    def holder(self, layer: str, key: str) -> LeaseInfo | None:
        """The holder of ``key``'s lease that may still be live (judged by the mechanism's
        witness), or None."""


class _Keeper(Protocol):
    """The mechanism's side of one held lease."""

    def holds(self, info: LeaseInfo) -> bool: ...

    def renew(self, info: LeaseInfo, renewed: LeaseInfo) -> bool: ...

    def release(self, info: LeaseInfo) -> None: ...


class Lease:
    """A lease this process holds; a daemon thread renews it until ``release()``.

    ``previous`` is the record this lease took over (None when there was none): whoever held it
    may still run, and write into the key's directory, unless it is proven gone."""

    def __init__(
        self, name: str, info: LeaseInfo, ttl: float, keeper: _Keeper, previous: LeaseInfo | None = None
    ) -> None:
        self.name = name
        self.info = info
        self.previous = previous
        self._ttl = ttl
        self._deadline = time.monotonic() + ttl  # by this process's own clock
        self._keeper = keeper
        self._lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._heartbeat, name=f"lease {name}", daemon=True)
        self._thread.start()

    def held(self) -> bool:
        """Whether this process still holds the lease: asks the mechanism, not only memory."""
        if self._stop.is_set() or self._lost.is_set() or time.monotonic() >= self._deadline:
            return False
        try:
            return self._keeper.holds(self.info)
        except Exception as error:  # an unreachable mechanism cannot vouch for us
            logger.warning("cachekeeper: cannot confirm the lease %s: %s", self.name, error)
            return False

    def _heartbeat(self) -> None:
        while not self._stop.wait(self._ttl / 3):
            started = time.monotonic()
            renewed = self.info._replace(expires_at=time.time() + self._ttl, beat=self.info.beat + 1)
            try:
                still_ours = self._keeper.renew(self.info, renewed)
            except Exception as error:  # a network blip: try again until the lease would expire
                if time.monotonic() < self._deadline:
                    logger.warning("cachekeeper: renewing the lease %s failed, retrying: %s", self.name, error)
                    continue
                still_ours = False
            if not still_ours:
                logger.warning("cachekeeper: lost the lease %s: another process took it over", self.name)
                self._lost.set()
                return
            self.info = renewed
            self._deadline = started + self._ttl

    def release(self) -> None:
        self._stop.set()
        self._thread.join()
        if self._lost.is_set():
            return
        try:
            self._keeper.release(self.info)
        except Exception as error:  # it expires on its own
            logger.warning("cachekeeper: could not release the lease %s (it will expire): %s", self.name, error)
