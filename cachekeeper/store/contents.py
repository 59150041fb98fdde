"""An artifact's contents: its files with their sizes and checksums, recorded at publish and
checked by ``verify``. Checksums go to a file of their own, named by their digest, so that the
sidecar a boot reads stays small whatever the artifact holds."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from ..values import Value
from .atomic import write_atomically
from .layout import Root
from .sidecars import Artifact

CHECKSUM_ALGORITHM = "xxh3_128"
CHECKSUMS_FORMAT = 1
# Reads on a network Volume mostly wait; xxhash releases the GIL, so threads overlap both.
_HASH_WORKERS = 8
_CHUNK = 1 << 20


class Contents(Value):
    """The files of an artifact directory: relative path → (size, xxh3-128 hex digest).

    ``checksum`` digests the whole listing: it names the checksums file and is what the sidecar
    records, so a damaged checksums file is told apart from a damaged artifact.
    """

    files: Mapping[str, tuple[int, str]]

    @property
    def bytes(self) -> int:
        return sum(size for size, _ in self.files.values())

    @property
    def count(self) -> int:
        return len(self.files)

    @property
    def checksum(self) -> str:
        return _listing_digest(self.files)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": CHECKSUMS_FORMAT,
            "algorithm": CHECKSUM_ALGORITHM,
            "files": {name: [size, digest] for name, (size, digest) in sorted(self.files.items())},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Contents:
        shape = (data.get("format"), data.get("algorithm")) if isinstance(data, Mapping) else None
        if shape != (CHECKSUMS_FORMAT, CHECKSUM_ALGORITHM):
            raise ValueError(f"not a checksums file of format {CHECKSUMS_FORMAT} ({CHECKSUM_ALGORITHM})")
        try:
            return cls({str(name): (int(size), str(digest)) for name, (size, digest) in dict(data["files"]).items()})
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"checksums file malformed: {error}") from None


def _listing_digest(files: Mapping[str, tuple[int, str]]) -> str:
    import xxhash

    listing = "".join(f"{name}\0{size}\0{digest}\n" for name, (size, digest) in sorted(files.items()))
    return xxhash.xxh3_128_hexdigest(listing.encode("utf-8", "surrogateescape"))


def list_files(path: Path, *, follow_links_within: Path | None = None) -> dict[str, tuple[int, str]]:
    """Regular files under ``path``: relative POSIX path → (size, the path to read).

    Symbolic links are skipped, except, when ``follow_links_within`` is given, links that resolve
    to a regular file inside that directory (a Hub snapshot's links into its blobs). Nothing is
    ever followed out of it.
    """
    within = os.path.realpath(follow_links_within) if follow_links_within is not None else None
    found: dict[str, tuple[int, str]] = {}
    for name, entry in _entries(path):
        try:
            if entry.is_file(follow_symlinks=False):
                found[name] = (entry.stat(follow_symlinks=False).st_size, entry.path)
            elif within is not None and (real := _inside(entry.path, within)) is not None:
                found[name] = (os.stat(real).st_size, real)
        except FileNotFoundError:
            continue
    return found


def foreign_links(path: Path, *, follow_links_within: Path | None = None) -> list[str]:
    """The symbolic links under ``path`` that ``list_files`` does not follow: in an artifact, a link
    is never part of it (and a cache variable pointed through one would write elsewhere)."""
    within = os.path.realpath(follow_links_within) if follow_links_within is not None else None
    return sorted(
        name
        for name, entry in _entries(path)
        if entry.is_symlink() and (within is None or _inside(entry.path, within) is None)
    )


def _entries(path: Path) -> Iterator[tuple[str, os.DirEntry[str]]]:
    """Every entry under ``path`` but directories, by relative POSIX name; links to directories
    are entries too, and never walked into."""
    stack = [(Path(path), "")]
    while stack:
        directory, prefix = stack.pop()
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        for entry in entries:
            name = f"{prefix}{entry.name}"
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append((Path(entry.path), f"{name}/"))
                    continue
            except FileNotFoundError:
                continue
            yield name, entry


def _inside(link: str, within: str) -> str | None:
    """The regular file ``link`` resolves to, if it lies inside ``within``."""
    real = os.path.realpath(link)
    try:
        return real if os.path.commonpath([real, within]) == within and os.path.isfile(real) else None
    except ValueError:
        return None


def hash_files(paths: Iterable[str], *, progress: Callable[[int], None] | None = None) -> dict[str, str | None]:
    """xxh3-128 of each file, read at disk speed on a few threads; None where it cannot be read."""
    from concurrent.futures import ThreadPoolExecutor

    paths = list(dict.fromkeys(paths))
    lock = threading.Lock()

    def one(path: str) -> str | None:
        digest, size = _hash_file(path)
        if progress is not None and size:
            with lock:
                progress(size)
        return digest

    if len(paths) <= 1:
        return {path: one(path) for path in paths}
    with ThreadPoolExecutor(min(_HASH_WORKERS, len(paths))) as pool:
        return dict(zip(paths, pool.map(one, paths), strict=True))


_buffers = threading.local()


def _hash_file(path: str) -> tuple[str | None, int]:
    import xxhash

    hasher = xxhash.xxh3_128()
    total = 0
    try:
        # O_NOFOLLOW: a file swapped for a link since it was listed is refused, not followed.
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None, 0
    with os.fdopen(descriptor, "rb", buffering=0) as handle:
        buffer = getattr(_buffers, "buffer", None)
        if buffer is None:
            buffer = _buffers.buffer = bytearray(_CHUNK)
        view = memoryview(buffer)
        try:
            while count := handle.readinto(buffer):
                hasher.update(view[:count])
                total += count
        except OSError:
            return None, total
    return hasher.hexdigest(), total


def scan_contents(
    path: Path, *, follow_links_within: Path | None = None, progress: Callable[[int], None] | None = None
) -> Contents:
    """Every file under ``path`` with its size and checksum (see ``list_files`` for links)."""
    listed = list_files(path, follow_links_within=follow_links_within)
    digests = hash_files((real for _, real in listed.values()), progress=progress)
    return Contents(
        {name: (size, digest) for name, (size, real) in listed.items() if (digest := digests[real]) is not None}
    )


def write_checksums(root: Root, artifact: Artifact, contents: Contents) -> Path:
    path = root.checksums_path(artifact.layer, artifact.key, contents.checksum)
    # Same name, same content: a concurrent writer of the same listing replaces it harmlessly.
    write_atomically(path, json.dumps(contents.to_json(), separators=(",", ":")).encode())
    return path


def read_checksums(root: Root, artifact: Artifact) -> Contents | None:
    """The checksums recorded when ``artifact`` was published; None if absent or damaged."""
    if artifact.checksum is None:
        return None
    try:
        data = json.loads(root.checksums_path(artifact.layer, artifact.key, artifact.checksum).read_bytes())
        contents = Contents.from_json(data)
    except (OSError, ValueError):
        return None
    return contents if contents.checksum == artifact.checksum else None


def measure(path: Path) -> tuple[int, int]:
    """(bytes, files) of the regular files under ``path``, without following symbolic links."""
    total, count = 0, 0
    stack = [path]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                stack.append(Path(entry.path))
            elif entry.is_file(follow_symlinks=False):
                try:
                    total += entry.stat(follow_symlinks=False).st_size
                except FileNotFoundError:
                    continue
                count += 1
    return total, count
