"""Where a boot records what happened: its own journal, or a server manifest directly.

A SQLite manifest is never written from a boot: it may sit on a Volume other containers write.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Protocol

from ..errors import CachekeeperError
from ..journal import Journal
from ..records import FOLDED_APART, Kind, Record
from ..store import Roots, read_sidecar

if TYPE_CHECKING:
    from ..manifest import Manifest

logger = logging.getLogger("cachekeeper")


class Writer(Protocol):
    def append(self, record: Record) -> None: ...

    def sync(self) -> None:
        """Make what was appended durable: before publishing what it records."""

    def close(self) -> None: ...


def open_writer(
    roots: Roots, url: str | None, *, read_only: bool = False
) -> tuple[Writer, Manifest | None, CachekeeperError | None]:
    """A journal of this process's own; with a server database, the manifest itself. On a main
    root this process cannot write (``read_only``), no journal: the server database, or nowhere.
    The third value is why a server database given could not be used (the caller says so)."""
    if not url or url.startswith("sqlite"):
        return _journal(roots, read_only), None, None
    from ..manifest import Manifest

    try:
        manifest = Manifest.open(url)
    except CachekeeperError as error:
        return _journal(roots, read_only), None, error
    return _ManifestWriter(manifest, roots, read_only), manifest, None


def _journal(roots: Roots, read_only: bool) -> Writer:
    return _Nowhere() if read_only else Journal(roots.main, sync_each=False)


class _Nowhere:
    """Where a process records when it can write neither its root nor a manifest: nothing is kept."""

    def append(self, record: Record) -> None:
        pass

    def sync(self) -> None:
        pass

    def close(self) -> None:
        pass


class _ManifestWriter:
    """Records straight into a server manifest; if it fails mid-boot, into a journal from then on."""

    def __init__(self, manifest: Manifest, roots: Roots, read_only: bool = False) -> None:
        self.manifest = manifest
        self.roots = roots
        self.read_only = read_only
        self.fallback: Writer | None = None

    def append(self, record: Record) -> None:
        if self.fallback is None:
            if record.kind is Kind.PUBLISHING:
                return  # the intent only helps a later sync of a journal
            artifacts = []
            if record.kind is Kind.PUBLISHED and record.layer and record.key:
                artifact = read_sidecar(self.roots.for_layer(record.layer), record.layer, record.key)
                artifacts = [artifact] if artifact is not None else []
            try:
                self.manifest.fold([record], artifacts, {})
                if record.kind in FOLDED_APART:
                    from ..quarantine import fold_records

                    fold_records(self.manifest, self.roots, [record])
                return
            except CachekeeperError as error:
                instead = "recording nothing" if self.read_only else "journaling instead"
                logger.warning("cachekeeper: writing the manifest failed, %s: %s", instead, error)
                self.fallback = _journal(self.roots, self.read_only)
        self.fallback.append(record)

    def sync(self) -> None:
        if self.fallback is not None:
            self.fallback.sync()

    def close(self) -> None:
        if self.fallback is not None:
            self.fallback.close()
