"""Where a boot records what happened: its own journal, or a server manifest directly.

A SQLite manifest is never written from a boot: it may sit on a Volume other containers write.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Protocol

from ..errors import CachekeeperError
from ..journal import Journal
from ..records import Kind, Record
from ..store import Roots, read_sidecar

if TYPE_CHECKING:
    from ..manifest import Manifest

logger = logging.getLogger("cachekeeper")


class Writer(Protocol):
    def append(self, record: Record) -> None: ...

    def close(self) -> None: ...


def open_writer(roots: Roots, url: str | None) -> tuple[Writer, Manifest | None]:
    """A journal of this process's own; with a server database, the manifest itself."""
    if not url or url.startswith("sqlite"):
        return Journal(roots.main), None
    from ..manifest import Manifest

    try:
        manifest = Manifest.open(url)
    except CachekeeperError as error:
        logger.warning("cachekeeper: the manifest database is not usable, journaling instead: %s", error)
        return Journal(roots.main), None
    return _ManifestWriter(manifest, roots), manifest


class _ManifestWriter:
    """Records straight into a server manifest; if it fails mid-boot, into a journal from then on."""

    def __init__(self, manifest: Manifest, roots: Roots) -> None:
        self.manifest = manifest
        self.roots = roots
        self.fallback: Journal | None = None

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
                return
            except CachekeeperError as error:
                logger.warning("cachekeeper: writing the manifest failed, journaling instead: %s", error)
                self.fallback = Journal(self.roots.main)
        self.fallback.append(record)

    def close(self) -> None:
        if self.fallback is not None:
            self.fallback.close()
