"""Judging records by the observer's own clock.

A use record, a lease, an unfinished build or a temporary file is written by a process on some
machine, whose clock may be minutes or days off. No timestamp it writes is ever compared with the
observer's clock. Instead the observer remembers when *it* first saw each record in its present
form (its *digest*: the content, or for a directory what is in it), and judges by that:

- first sight: the record is as young as can be (age 0);
- unchanged since first sight: its age is the time since, by the observer's clock;
- changed: first sight again.

So a record is stale once it has not changed for a TTL of the observer's time, whatever the
writer's clock says; a writer that renews a record must change its content each time (a counter,
the renewal time: the content, never its value as a clock, is what is compared).

Two memories: ``Memory`` for a process that waits (a boot waiting for a builder), by its monotonic
clock; ``Sightings`` for one-shot commands (prune, leftovers cleanup, check, verify), in the
manifest's ``sighting`` table, by this host's clock, so that the next command on the same host
remembers. Without memory (a manifest that cannot be written) every sight is a first sight: young,
so kept. Imports only the standard library at import time: this runs inside the server's boot.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Protocol

from .errors import CachekeeperError

if TYPE_CHECKING:
    from pathlib import Path

    from .manifest import Manifest

logger = logging.getLogger("cachekeeper")


def record_bytes(path: Path) -> bytes | None:
    """A record's bytes, to digest; for one that cannot be read, what its metadata says (it changes
    when the file does); None when it is gone."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError:
        try:
            stat = path.lstat()
        except FileNotFoundError:
            return None
        return f"unreadable {stat.st_size} {stat.st_mtime_ns} {stat.st_ino}".encode()


def digest(content: bytes | str) -> str:
    """A record's digest: what is compared from one sight to the next."""
    return hashlib.sha256(content.encode() if isinstance(content, str) else content).hexdigest()


class Witness(Protocol):
    """An observer's memory of records: how long each has been as it is now."""

    def ages(self, seen: Mapping[str, str], *, scope: str | None = None) -> dict[str, float]:
        """For each thing in ``seen`` (thing → digest): how long, in the observer's seconds, it has
        been as it is now (0 at first sight). Things under ``scope`` (a prefix of their names) that
        are not in ``seen`` are gone: they are forgotten."""
        ...

    def forget(self, scope: str) -> None:
        """Forget every thing under ``scope``: they are gone."""
        ...

    def forget_unseen(self, scope: str) -> None:
        """Forget every thing under ``scope`` that this witness has not seen: after a look at all of
        them, those were gone."""
        ...


def _parent(thing: str) -> str:
    return thing[: thing.rfind("/") + 1]


class Memory:
    """The memory of one process, by its monotonic clock (or ``clock``)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._first: dict[str, tuple[str, float]] = {}  # thing → (digest, first seen)
        self._under: dict[str, set[str]] = {}  # what is remembered, by the part of its name up to its last "/"
        self._seen: set[str] = set()

    def ages(self, seen: Mapping[str, str], *, scope: str | None = None) -> dict[str, float]:
        """See ``Witness.ages``; ``scope`` is the part of the names of ``seen`` up to their last "/"."""
        with self._lock:
            self._load()
            now = self._clock()
            if scope is not None:
                self._drop([thing for thing in self._under.get(scope, ()) if thing not in seen])
            for thing, value in seen.items():
                known = self._first.get(thing)
                if known is None or known[0] != value:
                    self._remember(thing, value, now)
                    self._noted(thing, value)
            self._seen.update(seen)
            return {thing: max(0.0, now - self._first[thing][1]) for thing in seen}

    def forget(self, scope: str) -> None:
        with self._lock:
            self._load()
            self._drop([thing for thing in self._first if thing.startswith(scope)])

    def forget_unseen(self, scope: str) -> None:
        with self._lock:
            self._load()
            self._drop([thing for thing in self._first if thing.startswith(scope) and thing not in self._seen])

    def _remember(self, thing: str, value: str, first_seen: float) -> None:
        self._first[thing] = (value, first_seen)
        self._under.setdefault(_parent(thing), set()).add(thing)

    def _drop(self, things: Iterable[str]) -> None:
        for thing in things:
            if self._first.pop(thing, None) is not None:
                under = self._under.get(_parent(thing))
                if under is not None:
                    under.discard(thing)
                    if not under:
                        del self._under[_parent(thing)]
            self._dropped(thing)

    def _load(self) -> None:
        """Read what is remembered elsewhere, once (a memory of its own has nothing to read)."""

    def _noted(self, thing: str, value: str) -> None:
        """``thing`` was seen anew as ``value``."""

    def _dropped(self, thing: str) -> None:
        """``thing`` is gone."""


class Sightings(Memory):
    """Memory kept in the manifest's ``sighting`` table by this host's clock (``clock``): the
    observer is this host (``processes.host_id``), so that every command run here shares it, and
    no other machine's clock is ever mixed in.

    What the observer remembers is read once, judged in memory, and what it saw anew (or found
    gone) is written at ``flush()`` in one statement per chunk: a prune looking at 100,000 keys
    writes once, not once per key. A sighting written late is later than the thing was first seen:
    it makes records look younger, never older. The ``with`` statement flushes on exit.

    A manifest that cannot be read or written (a read-only root) gives no memory across commands:
    every record is first seen by this command, and so never stale now."""

    def __init__(
        self, manifest: Manifest, *, observer: str | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        from .processes import host_id

        super().__init__(clock)
        self.manifest = manifest
        self.observer = host_id() if observer is None else observer
        self._loaded = False
        self._pending: dict[str, str] = {}  # seen anew: to write
        self._gone: set[str] = set()  # no longer there: to forget
        self._failed = False

    def __enter__(self) -> Sightings:
        return self

    def __exit__(self, *exc: object) -> None:
        self.flush()

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        try:
            found = self.manifest.sightings(self.observer)
        except (CachekeeperError, OSError) as error:  # no memory to read: every sight is a first one
            self._give_up(error)
            return
        for thing, sighting in found.items():
            self._remember(thing, sighting.digest, sighting.first_seen_at)

    def _noted(self, thing: str, value: str) -> None:
        self._pending[thing] = value
        self._gone.discard(thing)

    def _dropped(self, thing: str) -> None:
        self._pending.pop(thing, None)
        self._gone.add(thing)

    def flush(self) -> None:
        """Write what was seen anew and forget what is gone; nothing when nothing changed."""
        with self._lock:
            if self._failed or not (self._pending or self._gone):
                return
            pending, gone = self._pending, sorted(self._gone)
            self._pending, self._gone = {}, set()
            try:
                self.manifest.record_sightings(self.observer, pending, self._clock(), forget=gone)
            except (CachekeeperError, OSError) as error:
                self._give_up(error)

    def _give_up(self, error: Exception) -> None:
        if not self._failed:  # not a warning: a read-only root is no fault, and keeping is safe
            logger.info(
                "cachekeeper: cannot keep sightings in the manifest (%s): records are judged by what this "
                "command sees alone, so none is stale now",
                error,
            )
        self._failed = True
