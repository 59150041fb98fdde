"""Opening a cache: its roots and its manifest, with what containers recorded folded in.

Every command that looks at a root starts here, so that folding the journals happens in one place.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from .manifest import Manifest, default_url
from .store import Roots, check_state
from .sync import KEEP_EVENTS, SyncReport, refresh, sync
from .target import Target
from .values import Value


class Cache(Value):
    roots: Roots
    manifest: Manifest

    def fold(self, *, writing: bool = False, tidy: bool = False, keep_events: float = KEEP_EVENTS) -> SyncReport | None:
        """Fold what containers recorded since the last fold. ``writing`` for a caller about to
        change the root (prune, pin): a read-only root is then an error; otherwise the manifest
        answers as it stands there, with a warning (None). ``tidy`` (only when ``writing``): keep
        state bounded too, keeping events one by one for ``keep_events`` (see ``sync``)."""
        if writing:
            return sync(self.manifest, self.roots, tidy=tidy, keep_events=keep_events)
        return refresh(self.manifest, self.roots)


def open_cache(
    root: Path,
    *,
    roots: Mapping[str, Path] | None = None,
    db: str | None = None,
    target: Target | None = None,
    fold: bool = True,
    writing: bool = False,
) -> Cache:
    """The cache at ``root``, with layers on roots of their own in ``roots`` (over the target's
    ``[roots]``); its manifest at ``db`` (default: the SQLite file under the root); folded unless
    ``fold`` is false (see ``Cache.fold``)."""
    per_layer = {**(target.roots if target is not None else {}), **(roots or {})}
    layout = Roots.at(root, per_layer)
    for each in layout.all():
        # Before the manifest inside is opened (which may create it): nothing is made or changed in
        # a directory cachekeeper did not make a root, and no link in its state is followed.
        each.open_for("use")
        check_state(each)
    cache = Cache(layout, Manifest.open(db or default_url(layout)))
    if fold:
        cache.fold(writing=writing)
    return cache
