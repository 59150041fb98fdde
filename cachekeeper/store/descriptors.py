"""Removing and reading below a root by directory file descriptor, never by path.

Every step opens the next directory relative to the one before it, with ``O_NOFOLLOW``: a symbolic
link anywhere below the root is removed as a link or refused, never followed, and a directory
swapped for a link between a check and a removal cannot redirect either, since no path is
resolved twice. The root itself is opened by its path once: a root that is a link (a mount point
reached through one) was chosen by the person who named it.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from ..errors import StoreError, UnsafePath

_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


@contextmanager
def opened(top: Path, parts: Sequence[str]) -> Iterator[int | None]:
    """The directory ``top/parts...`` opened by walking from ``top``; None if some part is missing.
    A part that is a link or not a directory is refused."""
    _check_parts(parts)
    descriptors: list[int] = []
    try:
        try:
            descriptors.append(os.open(top, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0)))
            found = _walk(descriptors, parts, top)
        except FileNotFoundError:
            yield None
            return
        yield found
    finally:
        for descriptor in reversed(descriptors):
            os.close(descriptor)


def refuse_links(top: Path, parts: Sequence[str], below: Iterable[Sequence[str]]) -> None:
    """Refuse ``top/parts...``, and each directory ``below`` it (parts relative to it), when one is
    reached through a symbolic link or is not a directory; a missing one is no error. One walk
    from ``top``, then one from the directory for each of ``below``."""
    with opened(top, parts) as directory:
        if directory is None:
            return
        for inner in below:
            _check_parts(inner)
            descriptors: list[int] = []
            try:
                _walk(descriptors, inner, top.joinpath(*parts), start=directory)
            except FileNotFoundError:
                continue
            finally:
                for descriptor in reversed(descriptors):
                    os.close(descriptor)


def _walk(descriptors: list[int], parts: Sequence[str], shown: Path, start: int | None = None) -> int:
    """Open each of ``parts`` relative to the one before it, from ``start`` (else the last of
    ``descriptors``), appending what it opens to ``descriptors``; the last directory opened."""
    current = descriptors[-1] if start is None else start
    try:
        for part in parts:
            current = os.open(part, _DIRECTORY, dir_fd=current)
            descriptors.append(current)
    except OSError as error:
        if error.errno in (errno.ELOOP, errno.ENOTDIR):
            raise UnsafePath(f"refusing {shown / os.path.join(*parts)}: a part of it is a symbolic link") from None
        raise
    return current


def remove(top: Path, parts: Sequence[str]) -> bool:
    """Remove ``top/parts...`` (a file, a link, or a whole directory tree) without following any
    link; False if it was not there. Entries that vanish meanwhile (another process removing the
    same tree) are no error."""
    if not parts:
        raise UnsafePath(f"refusing to remove {top} itself")
    with opened(top, parts[:-1]) as parent:
        if parent is None:
            return False
        try:
            _remove_entry(parent, parts[-1])
        except FileNotFoundError:
            return False
        except OSError as error:
            raise StoreError(f"cannot remove {top / os.path.join(*parts)}: {error.strerror or error}") from error
    return True


def _remove_entry(parent: int, name: str) -> None:
    """Remove ``name`` in the directory ``parent``; a directory depth first, iteratively."""
    stack: list[tuple[int, str, int | None]] = [(parent, name, None)]
    owned: list[int] = []
    try:
        while stack:
            directory, entry, opened_fd = stack.pop()
            if opened_fd is not None:  # its entries are gone: remove the directory itself
                os.close(opened_fd)
                owned.remove(opened_fd)
                _ignore_vanished(os.rmdir, entry, directory)
                continue
            try:
                info = os.stat(entry, dir_fd=directory, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if not stat.S_ISDIR(info.st_mode):
                _ignore_vanished(os.unlink, entry, directory)
                continue
            try:
                child = os.open(entry, _DIRECTORY, dir_fd=directory)
            except FileNotFoundError:
                continue
            except OSError as error:
                if error.errno in (errno.ELOOP, errno.ENOTDIR):  # swapped for a link since: remove the link
                    _ignore_vanished(os.unlink, entry, directory)
                    continue
                raise
            owned.append(child)
            if os.fstat(child).st_ino != info.st_ino:  # swapped for another directory since the look
                raise UnsafePath(f"refusing to remove {entry!r}: it changed while being removed")
            stack.append((directory, entry, child))
            with os.scandir(child) as entries:
                stack.extend((child, each.name, None) for each in entries)
    finally:
        for descriptor in owned:
            os.close(descriptor)


def _ignore_vanished(function: Callable[..., None], entry: str, directory: int) -> None:
    try:
        function(entry, dir_fd=directory)
    except FileNotFoundError:
        pass


def read(top: Path, parts: Sequence[str], *, limit: int = 1 << 24) -> bytes | None:
    """The bytes of the regular file ``top/parts...`` (at most ``limit``), None if it is missing;
    a link anywhere on the way, the file included, is refused."""
    with opened(top, parts[:-1]) as parent:
        if parent is None:
            return None
        try:
            descriptor = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), dir_fd=parent)
        except FileNotFoundError:
            return None
        except OSError as error:
            if error.errno == errno.ELOOP:
                raise UnsafePath(f"refusing {top / os.path.join(*parts)}: it is a symbolic link") from None
            raise
        with os.fdopen(descriptor, "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                raise UnsafePath(f"refusing {top / os.path.join(*parts)}: not a regular file")
            return handle.read(limit)


def _check_parts(parts: Sequence[str]) -> None:
    for part in parts:
        if not part or part in (".", "..") or "/" in part or "\0" in part:
            raise UnsafePath(f"refusing the path part {part!r}: not a plain name")
