"""The cache root on disk: where each layer's artifacts live, their sidecars, and publishing.

::

    <root>/weights/               HF_HUB_CACHE (huggingface_hub's own revision-addressed layout)
    <root>/compile/<key>/         VLLM_CACHE_ROOT, TORCHINDUCTOR_CACHE_DIR, ... point inside
    <root>/snapshot/<key>/        vLLM snapshot output, or nothing for a Modal snapshot
    <root>/.cachekeeper/          manifest.db, sidecars/, checksums/, journal/, leases/, uses/

An artifact exists when, and only when, its sidecar does: the sidecar is written last, atomically,
and removed first. Its per-file checksums are written just before it, to a file of their own named
by their digest, so that the sidecar a boot reads stays small whatever the artifact holds.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple

from . import facts as f
from .errors import CachekeeperError, StoreError, UnsafePath
from .facts import Facts, FactValue, Source, freeze
from .keys import CacheKey, derive_key, parse_key
from .layers import WEIGHTS, layer_named

STATE_DIR = ".cachekeeper"

# An artifact's states in the manifest.
PUBLISHED = "published"
DELETING = "deleting"  # a prune removed the sidecar and is removing the files
SIDECAR_FORMAT = 1


def default_root(environ: Mapping[str, str] | None = None) -> Path:
    environ = os.environ if environ is None else environ
    if environ.get("CACHEKEEPER_ROOT"):
        return Path(environ["CACHEKEEPER_ROOT"]).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("cachekeeper"))


def builder_id() -> str:
    """Who is writing: host and process, as recorded in sidecars, journals and leases."""
    return f"{socket.gethostname()}:{os.getpid()}"


class Root(NamedTuple):
    """One cache root: a directory, usually a Volume mount, holding one or more layers."""

    path: Path

    @property
    def state_dir(self) -> Path:
        return self.path / STATE_DIR

    @property
    def manifest_path(self) -> Path:
        return self.state_dir / "manifest.db"

    @property
    def journal_dir(self) -> Path:
        return self.state_dir / "journal"

    def layer_dir(self, layer: str) -> Path:
        return self.path / layer

    def artifact_dir(self, layer: str, key: str) -> Path:
        return self.path / layer / key

    def sidecar_path(self, layer: str, key: str) -> Path:
        return self.state_dir / "sidecars" / layer / f"{key}.json"

    def checksums_path(self, layer: str, key: str, checksum: str) -> Path:
        return self.state_dir / "checksums" / layer / f"{key}.{checksum}.json"

    def inside(self, relpath: str) -> Path:
        """``relpath`` under this root, refusing anything that could lead out of it.

        Absolute paths, ``..`` and symlinked parent directories are refused; the last component may
        itself be a link, which callers must remove as a link and never follow.
        """
        parts = PurePosixPath(relpath).parts
        if not parts or PurePosixPath(relpath).is_absolute() or any(p in ("..", ".", "") for p in parts):
            raise UnsafePath(f"refusing path {relpath!r}: not a plain relative path inside {self.path}")
        current = self.path
        for part in parts[:-1]:
            current = current / part
            if current.is_symlink():
                raise UnsafePath(f"refusing path {relpath!r}: {current} is a symbolic link")
        return current / parts[-1]


# Directories of the state directory that hold one subdirectory per layer.
_PER_LAYER_STATE = ("sidecars", "checksums", "uses", "leases")


def check_state(root: Root) -> None:
    """Refuse a root whose state directory, or a directory in it, is a symbolic link: sidecars,
    journals, uses and leases are written and removed there, and must never be somewhere else."""
    state = root.state_dir
    parts = [state, root.journal_dir, root.journal_dir / "folded", *(state / name for name in _PER_LAYER_STATE)]
    linked = [path for path in parts if path.is_symlink()]
    if not linked:
        for name in _PER_LAYER_STATE:
            try:
                with os.scandir(state / name) as entries:
                    linked.extend(Path(entry.path) for entry in entries if entry.is_symlink())
            except (FileNotFoundError, NotADirectoryError):
                continue
    if linked:
        raise UnsafePath(
            f"refusing the cache root {root.path}: {linked[0]} is a symbolic link, and cachekeeper "
            "keeps its state inside the root (remove the link)"
        )


@dataclass(frozen=True)
class Roots:
    """The main root (manifest, journals) and any layer kept on a root of its own."""

    main: Root
    per_layer: Mapping[str, Root] = field(default_factory=dict)

    @classmethod
    def at(cls, main: Path, per_layer: Mapping[str, Path] | None = None) -> Roots:
        return cls(Root(main), {layer: Root(path) for layer, path in (per_layer or {}).items()})

    def for_layer(self, layer: str) -> Root:
        return self.per_layer.get(layer, self.main)

    def all(self) -> list[Root]:
        seen: dict[Path, Root] = {self.main.path: self.main}
        for root in self.per_layer.values():
            seen.setdefault(root.path, root)
        return list(seen.values())


@dataclass(frozen=True)
class Artifact:
    """What a sidecar says, and what the manifest indexes: one published artifact.

    ``relpath`` is relative to the layer's root, so the same Volume mounted elsewhere still works.
    Times are Unix seconds. ``depends_on`` names the artifacts this one was built from (a snapshot's
    weights and compile keys), which must live as long as it does. ``checksum`` is the digest of
    the per-file checksums recorded at publish (see ``Contents``); None for artifacts published
    before checksums were recorded.
    """

    key: str
    layer: str
    model: str
    relpath: str
    bytes: int
    files: int
    created_at: float
    last_used_at: float
    builder: str
    facts: Mapping[str, FactValue]
    depends_on: tuple[str, ...] = ()
    checksum: str | None = None

    def cache_key(self) -> CacheKey:
        layer, digest = parse_key(self.key)
        label = self.key[len(layer) + 1 : -len(digest) - 1]
        return CacheKey(layer, label, digest, Facts.from_values(self.facts, Source.OBSERVED))

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["facts"] = {name: _json_value(value) for name, value in self.facts.items()}
        return {"format": SIDECAR_FORMAT, **data}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Artifact:
        """Parse a sidecar; raises ValueError naming what is wrong."""
        if not isinstance(data, Mapping) or data.get("format") != SIDECAR_FORMAT:
            raise ValueError(f"not a sidecar of format {SIDECAR_FORMAT}")
        try:
            artifact = cls(
                key=str(data["key"]),
                layer=str(data["layer"]),
                model=str(data["model"]),
                relpath=str(data["relpath"]),
                bytes=int(data["bytes"]),
                files=int(data["files"]),
                created_at=float(data["created_at"]),
                last_used_at=float(data["last_used_at"]),
                builder=str(data["builder"]),
                facts={str(k): freeze(v) for k, v in dict(data["facts"]).items()},
                depends_on=tuple(str(key) for key in data.get("depends_on", ())),
                checksum=None if data.get("checksum") is None else str(data["checksum"]),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"sidecar field missing or malformed: {error}") from None
        try:
            layer, _ = parse_key(artifact.key)
        except CachekeeperError:
            raise ValueError(f"sidecar key {artifact.key!r} is not a cache key") from None
        if layer != artifact.layer:
            raise ValueError(f"key {artifact.key} does not belong to layer {artifact.layer}")
        return artifact


def artifact_path(root: Root, artifact: Artifact) -> Path:
    """The directory that ``artifact``'s key owns under ``root``: ``<layer>/<key>``, or for weights
    the Hub snapshot of the model and commit that derive its key.

    A recorded path that is anything else (a whole layer, the state directory, another artifact's
    directory, a path out of the root) or that passes through a symbolic link is refused: whatever
    a damaged or hostile record says, only the key's own files can be reached. The directory
    itself may be a link, which callers remove as a link and never follow.
    """
    owned = f"{artifact.layer}/{artifact.key}"
    if artifact.layer == WEIGHTS:
        model, sha = artifact.facts.get(f.MODEL), artifact.facts.get(f.MODEL_REVISION)
        facts = Facts.from_values(artifact.facts, Source.OBSERVED)
        derived = str(derive_key(layer_named(WEIGHTS), facts))
        if isinstance(model, str) and isinstance(sha, str) and derived == artifact.key:
            owned = f"{WEIGHTS}/{f.hf_repo_folder(model)}/snapshots/{sha}"
    if artifact.relpath != owned:
        raise UnsafePath(
            f"refusing path {artifact.relpath!r} of {artifact.key}: it is not the directory the key owns"
        )
    return root.inside(owned)


def _json_value(value: FactValue) -> Any:
    return [_json_value(item) for item in value] if isinstance(value, tuple) else value


def read_sidecar(root: Root, layer: str, key: str) -> Artifact | None:
    """The published artifact for ``key``, or None when there is none (or it is unreadable)."""
    try:
        artifact = Artifact.from_json(json.loads(root.sidecar_path(layer, key).read_bytes()))
    except (OSError, ValueError):
        return None
    # A sidecar copied or renamed under another key's name does not make that key exist.
    return artifact if (artifact.layer, artifact.key) == (layer, key) else None


def iter_sidecars(root: Root) -> Iterator[tuple[Path, Artifact | ValueError]]:
    """Every sidecar under ``root``: the parsed artifact, or the error that stopped parsing it."""
    base = root.state_dir / "sidecars"
    if not base.is_dir():
        return
    for layer_dir in sorted(base.iterdir()):
        if not layer_dir.is_dir() or layer_dir.is_symlink():
            continue
        for path in sorted(layer_dir.glob("*.json")):
            try:
                artifact = Artifact.from_json(json.loads(path.read_bytes()))
            except (OSError, ValueError) as error:
                yield path, ValueError(f"{path}: {error}")
                continue
            if (artifact.layer, artifact.key) != (layer_dir.name, path.stem):
                yield path, ValueError(f"{path}: it records {artifact.key}, another key")
            else:
                yield path, artifact


def publish(root: Root, artifact: Artifact, contents: Contents | None = None) -> bool:
    """Write the sidecar that makes ``artifact`` exist. False when another writer published first.

    The record goes to a temporary file that is then hard-linked into place: a link never
    replaces an existing file, so the first publisher wins and a crash leaves no partial sidecar.
    ``contents`` (whose checksum must be ``artifact.checksum``) is written before the sidecar, so
    a published artifact always has its checksums.
    """
    if contents is None:
        return _publish_sidecar(root, artifact)
    write_checksums(root, artifact, contents)
    published = False
    try:
        published = _publish_sidecar(root, artifact)
    finally:  # lost the race, or failed (a full disk): no checksums without their sidecar
        if not published:
            winner = read_sidecar(root, artifact.layer, artifact.key)
            if winner is None or winner.checksum != artifact.checksum:
                root.checksums_path(artifact.layer, artifact.key, contents.checksum).unlink(missing_ok=True)
    return published


def _publish_sidecar(root: Root, artifact: Artifact) -> bool:
    path = root.sidecar_path(artifact.layer, artifact.key)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        write_durably(temporary, json.dumps(artifact.to_json(), indent=1, sort_keys=True).encode())
        try:
            os.link(temporary, path)
        except FileExistsError:
            return False
        except OSError:  # file systems without hard links: check, then rename (a narrow race)
            if path.exists():
                return False
            os.replace(temporary, path)
        fsync_directory(path.parent)
        return True
    finally:
        temporary.unlink(missing_ok=True)


def unpublish(root: Root, layer: str, key: str, *, durable: bool = True) -> bool:
    """Remove the sidecar, so that no later boot trusts the artifact. False if it was gone.

    ``durable=False`` leaves the directory's fsync to the caller, who removes many at once and must
    call ``fsync_directory`` before touching any of their files.
    """
    try:
        root.sidecar_path(layer, key).unlink()
    except FileNotFoundError:
        return False
    if durable:
        fsync_directory(root.sidecar_path(layer, key).parent)
    return True


def write_durably(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def fsync_directory(path: Path) -> None:
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


def remove_tree(root: Root, relpath: str) -> None:
    """Delete an artifact directory inside ``root``; a symlink is removed as a link, not followed."""
    target = root.inside(relpath)
    try:
        if target.is_symlink() or target.is_file():
            target.unlink()
        elif sys.version_info >= (3, 12):
            shutil.rmtree(target, onexc=_ignore_vanished)
        else:
            shutil.rmtree(target, onerror=lambda fn, path, info: _ignore_vanished(fn, path, info[1]))
    except FileNotFoundError:
        return
    except OSError as error:
        raise StoreError(f"cannot remove {target}: {error.strerror or error}") from error


def _ignore_vanished(function: Any, path: str, error: BaseException) -> None:
    # Another process deleting the same tree is not a failure: the files are gone either way.
    if not isinstance(error, FileNotFoundError):
        raise error


# --- contents and checksums ---------------------------------------------------------------------

CHECKSUM_ALGORITHM = "xxh3_128"
CHECKSUMS_FORMAT = 1
# Reads on a network Volume mostly wait; xxhash releases the GIL, so threads overlap both.
_HASH_WORKERS = 8
_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class Contents:
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
                elif entry.is_file(follow_symlinks=False):
                    found[name] = (entry.stat(follow_symlinks=False).st_size, entry.path)
                elif entry.is_symlink() and within is not None:
                    real = os.path.realpath(entry.path)
                    if os.path.commonpath([real, within]) == within and os.path.isfile(real):
                        found[name] = (os.stat(real).st_size, real)
            except (FileNotFoundError, ValueError):
                continue
    return found


def hash_files(
    paths: Iterable[str], *, progress: Callable[[int], None] | None = None
) -> dict[str, str | None]:
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
        return dict(zip(paths, pool.map(one, paths)))


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
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        # Same name, same content: a concurrent writer of the same listing replaces it harmlessly.
        write_durably(temporary, json.dumps(contents.to_json(), separators=(",", ":")).encode())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
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


def remove_checksums(root: Root, artifact: Artifact) -> None:
    if artifact.checksum is not None:
        root.checksums_path(artifact.layer, artifact.key, artifact.checksum).unlink(missing_ok=True)
