"""Writing a file so that readers see the old version or the new one, never a part of either."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

# A prune removes an empty uses or leases directory of a key; a writer that made it a moment before
# makes it again, a few times, rather than fail.
_MKDIR_ATTEMPTS = 8


def write_atomically(path: Path, data: bytes, *, exclusive: bool = False, durable: bool = True) -> bool:
    """Write ``data`` to ``path`` through a temporary file beside it; False only when ``exclusive``
    and ``path`` exists already.

    ``exclusive`` links the file into place: a link never replaces an existing file, so of writers
    racing for one name exactly one wins. Otherwise the file replaces whatever was there.
    ``durable`` syncs the file and its directory before returning: set it for what must survive a
    crash of the machine (a sidecar), not for what is rewritten every few seconds (a use).
    """
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    renamed = False
    try:
        for attempt in range(_MKDIR_ATTEMPTS):
            try:
                _write(temporary, data, durable)
                break
            except FileNotFoundError:  # the directory is made when a write finds it missing
                if attempt == _MKDIR_ATTEMPTS - 1:
                    raise
                path.parent.mkdir(parents=True, exist_ok=True)
        if exclusive:
            try:
                os.link(temporary, path)
            except FileExistsError:
                return False
            except OSError:  # a file system without hard links: check, then rename (a narrow race)
                if path.exists():
                    return False
                os.replace(temporary, path)
                renamed = True
        else:
            os.replace(temporary, path)
            renamed = True
        if durable:
            fsync_directory(path.parent)
        return True
    finally:
        if not renamed:
            temporary.unlink(missing_ok=True)


def _write(path: Path, data: bytes, durable: bool) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        if durable:
            handle.flush()
            os.fsync(handle.fileno())


def fsync_directory(path: Path) -> None:
    """Make the names in ``path`` durable (a file created, linked, renamed or removed there)."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
