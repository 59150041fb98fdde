"""What a boot owes the artifacts it hits: an attempt each, settled when its block ends, and its
canary. See strikes.py, quarantine.py and canary.py for the mechanisms; this is their use in one
boot.

On entry, each hit is vetted: dead boots' attempts become strikes; an artifact with ``strikes``
strikes within the window is quarantined and the layer claimed again (it builds afresh), or, when
it cannot be quarantined now (another process uses it, or the root is read-only), the layer boots
cold privately; otherwise an attempt is recorded. On exit, ``settle`` turns each attempt into a
success (the strikes this boot saw are cleared) or a strike (the block raised, ``cachekeeper run``'s
command failed, the canary differed), and stores the canary of what this boot built, before its
sidecar is published. Nothing here may fail a boot: every step that fails is one warning.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import strikes
from ..records import Kind, Record
from ..store import builder_id
from ..strikes import DEFAULT_STRIKES, DEFAULT_WINDOW, Attempt, Strike, Tally, struck
from ..values import Value
from .claims import BUILD, HIT, Claim, private_claim

if TYPE_CHECKING:
    from ..leases import Leases
    from ..manifest import Manifest
    from .recording import Writer

logger = logging.getLogger("cachekeeper")


class StrikePolicy(Value):
    """Quarantine an artifact after ``strikes`` failed boots within ``window`` seconds; 0 never."""

    strikes: int = DEFAULT_STRIKES
    window: float = DEFAULT_WINDOW


class _Watched:  # a plain class, not a dataclass: a boot defines it (see values.py)
    __slots__ = ("attempt", "canary", "claim", "seen")

    def __init__(self, claim: Claim, attempt: Attempt | None, seen: tuple[Strike, ...]) -> None:
        self.claim = claim
        self.attempt = attempt  # None on a read-only root, where nothing is written
        self.seen = seen  # the strikes counted on entry: a success clears them
        self.canary: tuple[str, str] | None = None  # (stored, computed) when they differ


class Watch:
    """One boot's attempts on the artifacts it hit, and its canary."""

    def __init__(
        self,
        policy: StrikePolicy,
        writer: Writer,
        manifest: Manifest | None,
        model: str,
        read_only: frozenset[Path] = frozenset(),
    ) -> None:
        self.policy = policy
        self.writer = writer
        self.manifest = manifest
        self.model = model
        self.read_only = read_only
        self.watched: list[_Watched] = []
        self.digest: str | None = None
        self._warned: set[str] = set()

    # --- entry --------------------------------------------------------------------------------

    def vet(self, claim: Claim, again: Callable[[], Claim], leases: Callable[[], Leases]) -> Claim:
        """A claimed hit as it may be used: the same claim (its attempt recorded), a new claim of
        the layer after quarantining the artifact, or a private cold boot."""
        for _ in range(3):  # a new artifact hit right after a quarantine is vetted in turn
            if claim.use.status != HIT or not struck(claim.layer.name):
                return claim
            layer, key, root = claim.layer.name, str(claim.use.key), claim.root
            read_only = root.path in self.read_only
            tally = Tally() if read_only else strikes.look(root, layer, key)
            made = [] if read_only else strikes.dead_attempts(root, tally)
            self._record(each.record(self.model) for each in made)
            known = {each.uid: each for each in (*tally.strikes, *made, *self._manifest_strikes(layer, key))}
            now = time.time()
            counted = [each for each in known.values() if now - each.at <= self.policy.window]
            if not self.policy.strikes or len(counted) < self.policy.strikes:
                self.watched.append(_Watched(claim, self._attempt(claim, read_only), tuple(known.values())))
                return claim
            reasons = "; ".join(sorted({each.reason for each in counted}))
            why = f"not using {key}: {len(counted)} failed boot(s) ({reasons})"
            if read_only:
                return private_claim(claim.layer, claim.use.key, root, f"{why}; its root is read-only")
            from ..quarantine import BUSY, IN_USE, quarantine, quarantined_records

            _release(claim)
            outcome = quarantine(root, layer, key, counted, leases(), self._served(key))
            if outcome.status in (BUSY, IN_USE):
                return private_claim(claim.layer, claim.use.key, root, f"{why}; not quarantined now: {outcome.why}")
            if outcome.entry is not None:
                self._record(quarantined_records(outcome.entry))
                logger.warning(
                    "cachekeeper: quarantined %s after %d failed boot(s) (%s): moved to %s; it is built afresh",
                    key,
                    len(counted),
                    reasons,
                    root.path.joinpath(*root.quarantine_parts(layer, outcome.entry.name)),
                )
            claim = again()
        return claim

    def _attempt(self, claim: Claim, read_only: bool) -> Attempt | None:
        if read_only:
            return None
        try:
            return strikes.attempt(claim.root, claim.layer.name, str(claim.use.key))
        except OSError as error:  # the boot goes on; a failure of it will not count
            self._warn(f"could not record this boot's attempt on {claim.use.key}: {error}")
            return None

    def _manifest_strikes(self, layer: str, key: str) -> list[Strike]:
        """Strikes read-only servers left in a server manifest (they write no file)."""
        if self.manifest is None:
            return []
        from ..manifest import quarantined

        try:
            return [
                Strike(uid, layer, key, at, why, host)
                for uid, at, why, host in quarantined.open_strikes(self.manifest, layer, key)
            ]
        except Exception as error:
            self._warn(f"could not read the strikes of {key} in the manifest: {error}")
            return []

    def _served(self, key: str) -> list[str]:
        """Read-only servers' uses of ``key`` in a server manifest: they too keep it in place."""
        if self.manifest is None:
            return []
        from ..liveness import Sightings
        from ..manifest import served

        try:
            with Sightings(self.manifest) as witness:  # this host's memory: a dead row lapses
                return served.users(self.manifest, key, witness)
        except Exception as error:  # unknown: keep it where it is
            self._warn(f"could not read who serves {key} from the manifest: {error}")
            return ["a server the manifest could not name"]

    # --- the block ------------------------------------------------------------------------------

    def canary(self, value: Any) -> str:
        """Compare ``value``'s digest with what the builder of each artifact hit stored; a
        difference is an error now and a strike when the block ends. The digest is stored with
        whatever this boot builds."""
        from .. import canary

        self.digest = canary.digest(value)
        for each in self.watched:
            key = str(each.claim.use.key)
            stored = canary.stored(each.claim.root, each.claim.layer.name, key)
            if stored is None or stored == self.digest:
                each.canary = None
                continue
            each.canary = (stored, self.digest)
            logger.error(
                "cachekeeper: canary mismatch on %s: the boot that built it computed %s, this boot computed %s; "
                "its caches may compute garbage (a strike against it)",
                key,
                canary.short(stored),
                canary.short(self.digest),
            )
        return self.digest

    # --- exit -----------------------------------------------------------------------------------

    def succeeded(self, claims: Sequence[Claim]) -> None:
        """The block ended well: store the canary of what was built (before it is published), clear
        the strikes of what was hit, or strike what the canary says is wrong."""
        for claim in claims:
            if claim.use.status == BUILD and struck(claim.layer.name):
                self._guarded(partial(self._before_publishing, claim))
        for each in self.watched:
            if each.canary is not None:
                stored, computed = each.canary
                reason = f"canary mismatch: built {stored[:16]}, this boot {computed[:16]}"
                self._guarded(partial(self._strike, each, reason))
            else:
                self._guarded(partial(self._clear, each))
        self.watched = []

    def failed(self, reason: str | None) -> None:
        """The block failed (``reason``: how), or ended without saying (None: a KeyboardInterrupt,
        a discard): strike or settle every attempt."""
        for each in self.watched:
            if reason is None:
                self._guarded(partial(self._settle, each))
            else:
                self._guarded(partial(self._strike, each, reason))
        self.watched = []

    def _before_publishing(self, claim: Claim) -> None:
        """A new artifact starts with its builder's canary and no strikes: those an artifact pruned
        or quarantined before left are not its own."""
        if claim.lease is not None and not claim.lease.held():
            return  # not ours to publish: leave what the new builder writes
        from .. import canary

        layer, key = claim.layer.name, str(claim.use.key)
        strikes.forget(claim.root, layer, key)
        if self.digest is None:
            canary.remove(claim.root, layer, key)  # one a failed build left would be taken for ours
        else:
            canary.store(claim.root, layer, key, self.digest)

    def _strike(self, each: _Watched, reason: str) -> None:
        claim = each.claim
        layer, key = claim.layer.name, str(claim.use.key)
        if each.attempt is None:
            record = Record.new(Kind.STRIKE, layer=layer, key=key, model=self.model, host=builder_id(), reason=reason)
        else:
            made = strikes.strike(claim.root, each.attempt, reason, at=time.time())
            if made is None:
                return
            record = made.record(self.model)
        self.writer.append(record)
        logger.warning("cachekeeper: a strike against %s: %s", key, reason)

    def _clear(self, each: _Watched) -> None:
        if each.attempt is not None:
            strikes.settle(each.claim.root, each.attempt)
        self._record(strikes.clear(each.claim.root, each.seen))

    def _settle(self, each: _Watched) -> None:
        if each.attempt is not None:
            strikes.settle(each.claim.root, each.attempt)

    # --- helpers --------------------------------------------------------------------------------

    def _record(self, records: Any) -> None:
        for record in records:
            self._guarded(partial(self.writer.append, record))

    def _guarded(self, step: Callable[[], object]) -> None:
        try:
            step()
        except Exception as error:
            self._warn(f"keeping the record of this boot's cache use failed: {error}")

    def _warn(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            logger.warning("cachekeeper: %s", message)


def _release(claim: Claim) -> None:
    if claim.registration is not None:
        claim.registration.release()
        claim.registration = None
