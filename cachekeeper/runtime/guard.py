"""How a boot claims each layer without letting the cache fail it: a root it cannot write is served
read-only (readonly.py), a lease mechanism that fails or cannot be trusted makes the layer boot
cold privately, and every hit is vetted for strikes (watch.py). One warning per cause."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import CachekeeperError, LeasesUnavailable
from ..keys import CacheKey
from ..layers import Layer
from ..store import Root, Roots
from .claims import Claim, Waiting, claim, private_claim
from .watch import Watch

if TYPE_CHECKING:
    from ..leases import Lease, LeaseInfo, Leases
    from .served import ServedUses

logger = logging.getLogger("cachekeeper")


class _Unavailable:
    """A lease mechanism that refuses to build anything, and says why."""

    def __init__(self, why: str) -> None:
        self.why = why
        self.ttl = 0.0

    def acquire(self, layer: str, key: str) -> Lease | None:
        raise LeasesUnavailable(self.why)

    def holder(self, layer: str, key: str) -> LeaseInfo | None:
        return None


def read_only(root: Root) -> bool:
    """Whether this process cannot write ``root`` (a read-only mount, or no permission): asked of
    the file system before anything is written. A root not made yet is read-only when the nearest
    directory above it that exists is."""
    path = root.path
    while not os.path.lexists(path) and path.parent != path:
        path = path.parent
    return not os.access(path, os.W_OK)


def read_only_roots(roots: Roots) -> frozenset[Path]:
    """The roots of ``roots`` this process cannot write (see runtime/readonly.py); one warning each."""
    found = frozenset(root.path for root in roots.all() if read_only(root))
    for path in sorted(found):
        logger.warning(
            "cachekeeper: %s is read-only: hits are served read-only, misses boot cold privately, "
            "and nothing is written there",
            path,
        )
    return found


def unavailable(why: str) -> Callable[[], Leases]:
    """A lease mechanism for builders when the one configured failed: every cold key boots privately."""
    return lambda: _Unavailable(why)


class Guard:
    """One boot's defences; a plain class, not a dataclass: a boot defines it (see values.py)."""

    def __init__(
        self, watch: Watch, read_only: frozenset[Path], read_only_hits: str, served: ServedUses | None = None
    ) -> None:
        self.watch = watch
        self.read_only = read_only
        self.read_only_hits = read_only_hits
        self.served = served
        self._warned: set[str] = set()

    def claim(self, layer: Layer, key: CacheKey, root: Root, leases: Callable[[], Leases], waiting: Waiting) -> Claim:
        """This boot's use of one layer: never an exception for what the cache did."""

        def again() -> Claim:
            return self._claim(layer, key, root, leases, waiting)

        found = again()
        return self.watch.vet(found, again, leases) if found.use.hit else found

    def _claim(self, layer: Layer, key: CacheKey, root: Root, leases: Callable[[], Leases], waiting: Waiting) -> Claim:
        if root.path in self.read_only:
            from .readonly import claim_read_only  # loaded by boots on a read-only root alone

            return claim_read_only(layer, key, root, self.read_only_hits, self.served)
        try:
            return claim(layer, key, root, leases, waiting)
        except LeasesUnavailable as error:
            return self._private(layer, key, root, str(error))
        except Exception as error:  # a Modal Dict that raises, a disk that refuses a use file, ...
            return self._private(layer, key, root, f"cannot use the cache at {root.path}: {describe(error)}")

    def announced(self, why: str) -> None:
        """``why`` was said already: layers that boot privately for it say nothing more."""
        self._warned.add(why)

    def _private(self, layer: Layer, key: CacheKey, root: Root, why: str) -> Claim:
        first = why not in self._warned
        self._warned.add(why)
        return private_claim(layer, key, root, why if first else None)


def describe(error: BaseException) -> str:
    """One line naming what failed: the error's type when its message does not say, the path of a
    file system error."""
    if isinstance(error, OSError) and error.strerror:
        text = f"{error.filename}: {error.strerror}" if error.filename is not None else error.strerror
    elif isinstance(error, CachekeeperError):
        text = str(error)
    else:
        text = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    return " ".join(text.split())
