"""Where everything lives under a cache root. Every path under a root is made here, and nowhere else.

::

    <root>/weights/                        HF_HUB_CACHE (huggingface_hub's own revision-addressed layout)
    <root>/<layer>/<key>/                  an artifact: VLLM_CACHE_ROOT, TORCHINDUCTOR_CACHE_DIR, ... inside
    <root>/.cachekeeper/manifest.db        the SQLite manifest (the default)
    <root>/.cachekeeper/sidecars/<layer>/<key>.json             what makes an artifact exist
    <root>/.cachekeeper/checksums/<layer>/<key>.<digest>.json   its files' checksums at publish
    <root>/.cachekeeper/journal/[folded/]<writer>.jsonl         what each process recorded
    <root>/.cachekeeper/uses/<layer>/<key>/<process>.json       who uses an artifact now
    <root>/.cachekeeper/leases/<layer>/<key>/<generation>.lease who builds it
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import NamedTuple

from ..errors import UnsafePath
from ..layers import WEIGHTS

STATE_DIR = ".cachekeeper"
SIDECARS = "sidecars"
CHECKSUMS = "checksums"
JOURNAL = "journal"
FOLDED = "folded"
USES = "uses"
LEASES = "leases"
# Directories of the state directory that hold one subdirectory per layer.
PER_LAYER_STATE = (SIDECARS, CHECKSUMS, USES, LEASES)


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
        return self.state_dir / JOURNAL

    @property
    def folded_dir(self) -> Path:
        return self.journal_dir / FOLDED

    def layer_dir(self, layer: str) -> Path:
        return self.path / layer

    def artifact_dir(self, layer: str, key: str) -> Path:
        return self.path / layer / key

    def state_layer_dir(self, kind: str, layer: str) -> Path:
        """``.cachekeeper/<kind>/<layer>``, for one of PER_LAYER_STATE."""
        return self.state_dir / kind / layer

    def sidecar_path(self, layer: str, key: str) -> Path:
        return self.state_layer_dir(SIDECARS, layer) / f"{key}.json"

    def checksums_path(self, layer: str, key: str, checksum: str) -> Path:
        return self.state_layer_dir(CHECKSUMS, layer) / f"{key}.{checksum}.json"

    def uses_dir(self, layer: str, key: str) -> Path:
        return self.state_layer_dir(USES, layer) / key

    def leases_dir(self) -> Path:
        return self.state_dir / LEASES

    def state_layers(self, kind: str) -> Iterator[tuple[str, Path]]:
        """(layer, directory) of every real (not linked) layer directory under ``.cachekeeper/<kind>``."""
        base = self.state_dir / kind
        try:
            entries = sorted(os.scandir(base), key=lambda entry: entry.name)
        except (FileNotFoundError, NotADirectoryError):
            return
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                yield entry.name, Path(entry.path)

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


def check_state(root: Root) -> None:
    """Refuse a root whose state directory, or a directory in it, is a symbolic link: sidecars,
    journals, uses and leases are written and removed there, and must never be somewhere else."""
    state = root.state_dir
    parts = [state, root.journal_dir, root.folded_dir, *(state / name for name in PER_LAYER_STATE)]
    linked = [path for path in parts if path.is_symlink()]
    if not linked:
        for name in PER_LAYER_STATE:
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

    def hf_cache(self) -> Path:
        """The weights layer's directory: a Hugging Face cache (HF_HUB_CACHE)."""
        return self.for_layer(WEIGHTS).layer_dir(WEIGHTS)

    def all(self) -> list[Root]:
        seen: dict[Path, Root] = {self.main.path: self.main}
        for root in self.per_layer.values():
            seen.setdefault(root.path, root)
        return list(seen.values())
