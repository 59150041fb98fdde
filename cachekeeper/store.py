"""The cache root on disk: where each layer's artifacts live, their sidecars, and publishing.

::

    <root>/weights/               HF_HUB_CACHE (huggingface_hub's own revision-addressed layout)
    <root>/compile/<key>/         VLLM_CACHE_ROOT, TORCHINDUCTOR_CACHE_DIR, ... point inside
    <root>/snapshot/<key>/        vLLM snapshot output, or nothing for a Modal snapshot
    <root>/.cachekeeper/          manifest.db, sidecars/, journal/, leases/

An artifact exists when, and only when, its sidecar does: the sidecar is written last, atomically,
and removed first.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from .errors import StoreError, UnsafePath
from .facts import Facts, FactValue, Source, freeze
from .keys import CacheKey, parse_key

STATE_DIR = ".cachekeeper"
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


@dataclass(frozen=True, slots=True)
class Root:
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
    Times are Unix seconds.
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
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"sidecar field missing or malformed: {error}") from None
        layer, _ = parse_key(artifact.key)
        if layer != artifact.layer:
            raise ValueError(f"key {artifact.key} does not belong to layer {artifact.layer}")
        return artifact


def _json_value(value: FactValue) -> Any:
    return [_json_value(item) for item in value] if isinstance(value, tuple) else value


def read_sidecar(root: Root, layer: str, key: str) -> Artifact | None:
    """The published artifact for ``key``, or None when there is none (or it is unreadable)."""
    try:
        return Artifact.from_json(json.loads(root.sidecar_path(layer, key).read_bytes()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return None


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
                yield path, Artifact.from_json(json.loads(path.read_bytes()))
            except (OSError, ValueError) as error:
                yield path, ValueError(f"{path}: {error}")


def publish(root: Root, artifact: Artifact) -> bool:
    """Write the sidecar that makes ``artifact`` exist. False when another writer published first.

    The record goes to a temporary file that is then hard-linked into place: a link never
    replaces an existing file, so the first publisher wins and a crash leaves no partial sidecar.
    """
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
        _fsync_dir(path.parent)
        return True
    finally:
        temporary.unlink(missing_ok=True)


def unpublish(root: Root, layer: str, key: str) -> bool:
    """Remove the sidecar, so that no later boot trusts the artifact. False if it was gone."""
    try:
        root.sidecar_path(layer, key).unlink()
    except FileNotFoundError:
        return False
    _fsync_dir(root.sidecar_path(layer, key).parent)
    return True


def write_durably(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
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
