"""``inspect``: what one artifact holds, down to the caches vLLM and torch keep inside it.

A compile artifact is one cachekeeper key, but vLLM keys its own cache too, by a hash it can only
compute after tracing the model. Two vLLM directories under one of our keys mean vLLM missed its
own cache on some boot (an environment variable, a source file, a config it hashes changed): the
factors it wrote (``cache_key_factors.json``) say which. The layout read here (vLLM 0.33)::

    vllm/torch_compile_cache/<hash10>/rank_<r>_<dp>/<prefix>/cache_key_factors.json, ...
    vllm/torch_compile_cache/torch_aot_compile/<hash64>/{inductor_cache/, rank_<r>_<dp>/model}
    inductor/{fxgraph/<2>/<key>/, aotautograd/<key>/}        (TORCHINDUCTOR_CACHE_DIR)
    triton/<kernel hash>/                                      (TRITON_CACHE_DIR)
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import UnknownKeyError
from .facts import thaw
from .keys import parse_key
from .layers import WEIGHTS
from .manifest import Manifest
from .quarantine import Quarantined, entries, path_of
from .store import PUBLISHED, Artifact, Roots, artifact_path, list_files, read_sidecar
from .strikes import Strike, look, struck
from .uses import UseInfo, users

FACTORS_FILE = "cache_key_factors.json"
QUARANTINED = "quarantined"
_RANK = re.compile(r"rank_\d+_\d+")


@dataclass(frozen=True, slots=True)
class VllmCacheDir:
    """One of vLLM's per-backend cache directories: ``<hash>/rank_<r>_<dp>/<prefix>``."""

    hash: str
    rank: str
    prefix: str  # "backbone", "eagle_head", ...; "" when the rank directory holds the files
    relpath: str  # relative to the artifact directory
    files: int
    bytes: int
    factors: Mapping[str, Any] | None  # what vLLM hashed, where it wrote it


@dataclass(frozen=True, slots=True)
class VllmAotDir:
    """One of vLLM's AOT-compile directories: ``torch_aot_compile/<hash>``."""

    hash: str
    relpath: str
    ranks: tuple[str, ...]
    files: int
    bytes: int


@dataclass(frozen=True, slots=True)
class InductorCache:
    relpath: str
    fxgraph: int  # FX graph cache entries
    aotautograd: int  # AOTAutograd cache entries
    files: int
    bytes: int


@dataclass(frozen=True, slots=True)
class FactorChange:
    """A factor two of vLLM's directories under one key hashed differently: why vLLM missed."""

    rank: str
    prefix: str
    old_hash: str
    new_hash: str
    factor: str  # dotted path into cache_key_factors.json
    old: Any
    new: Any


@dataclass(frozen=True, slots=True)
class Inspection:
    artifact: Artifact
    path: Path
    pinned: bool
    users: tuple[UseInfo, ...]
    dependents: tuple[str, ...]  # live snapshots built from it
    vllm: tuple[VllmCacheDir, ...]
    aot: tuple[VllmAotDir, ...]
    inductor: tuple[InductorCache, ...]
    triton_kernels: int
    factor_changes: tuple[FactorChange, ...]
    state: str = PUBLISHED  # or QUARANTINED: what is shown is the newest quarantined copy
    strikes: tuple[Strike, ...] = ()  # failed boots against it not cleared yet
    quarantined: tuple[Quarantined, ...] = ()  # copies of this key that were quarantined

    def to_json(self) -> dict[str, Any]:
        a = self.artifact
        return {
            **{name: value for name, value in a.to_json().items() if name not in ("format", "relpath")},
            "state": self.state,
            "strikes": [strike.to_json() for strike in self.strikes],
            "quarantined": [entry.summary() for entry in self.quarantined],
            "facts": {name: thaw(value) for name, value in a.facts.items()},
            "depends_on": list(a.depends_on),
            "path": str(self.path),
            "pinned": self.pinned,
            "users": [use.owner for use in self.users],
            "dependents": list(self.dependents),
            "vllm": [
                {
                    "hash": d.hash,
                    "rank": d.rank,
                    "prefix": d.prefix,
                    "path": d.relpath,
                    "files": d.files,
                    "bytes": d.bytes,
                    "factors": d.factors,
                }
                for d in self.vllm
            ],
            "aot": [
                {"hash": d.hash, "path": d.relpath, "ranks": list(d.ranks), "files": d.files, "bytes": d.bytes}
                for d in self.aot
            ],
            "inductor": [
                {
                    "path": d.relpath,
                    "fxgraph": d.fxgraph,
                    "aotautograd": d.aotautograd,
                    "files": d.files,
                    "bytes": d.bytes,
                }
                for d in self.inductor
            ],
            "triton_kernels": self.triton_kernels,
            "factor_changes": [
                {
                    "rank": c.rank,
                    "prefix": c.prefix,
                    "old_hash": c.old_hash,
                    "new_hash": c.new_hash,
                    "factor": c.factor,
                    "old": c.old,
                    "new": c.new,
                }
                for c in self.factor_changes
            ],
        }


def inspect_artifact(manifest: Manifest, roots: Roots, key: str) -> Inspection:
    layer, _ = parse_key(key)
    root = roots.for_layer(layer)
    artifact = manifest.artifact(key) or read_sidecar(root, layer, key)
    quarantined = tuple(entries(roots, key=key))
    state, path = PUBLISHED, None
    if artifact is None and quarantined and quarantined[0].artifact is not None:
        state, artifact, path = QUARANTINED, quarantined[0].artifact, path_of(root, quarantined[0])
    if artifact is None:
        raise UnknownKeyError(f"no artifact {key}: `cachekeeper ls` lists the artifacts there are")
    path = path or artifact_path(root, artifact)
    # A directory that is a link would lead out of the root: its record is shown, its files are not.
    walk = layer != WEIGHTS and not path.is_symlink()
    vllm = _vllm_dirs(path) if walk else ()
    return Inspection(
        artifact=artifact,
        path=path,
        pinned=key in manifest.pinned(),
        users=tuple(users(root, layer, key)),
        dependents=tuple(manifest.dependents().get(key, ())),
        vllm=vllm,
        aot=_aot_dirs(path) if walk else (),
        inductor=_inductor_caches(path) if walk else (),
        triton_kernels=_count_dirs(path / "triton") if walk else 0,
        factor_changes=_factor_changes(vllm),
        state=state,
        strikes=look(root, layer, key).strikes if struck(layer) and state == PUBLISHED else (),
        quarantined=quarantined,
    )


def _vllm_dirs(path: Path) -> tuple[VllmCacheDir, ...]:
    base = path / "vllm" / "torch_compile_cache"
    found = []
    for hash_dir in _subdirs(base):
        if hash_dir.name == "torch_aot_compile":
            continue
        for rank_dir in _subdirs(hash_dir):
            if not _RANK.fullmatch(rank_dir.name):
                continue
            prefixes = [d for d in _subdirs(rank_dir) if (d / FACTORS_FILE).is_file()]
            for directory in prefixes or [rank_dir]:
                files = list_files(directory)
                found.append(
                    VllmCacheDir(
                        hash=hash_dir.name,
                        rank=rank_dir.name,
                        prefix=directory.name if directory is not rank_dir else "",
                        relpath=str(directory.relative_to(path)),
                        files=len(files),
                        bytes=sum(size for size, _ in files.values()),
                        factors=_factors(directory / FACTORS_FILE),
                    )
                )
    return tuple(found)


def _aot_dirs(path: Path) -> tuple[VllmAotDir, ...]:
    base = path / "vllm" / "torch_compile_cache" / "torch_aot_compile"
    found = []
    for hash_dir in _subdirs(base):
        files = list_files(hash_dir)
        ranks = tuple(d.name for d in _subdirs(hash_dir) if _RANK.fullmatch(d.name))
        found.append(
            VllmAotDir(
                hash_dir.name, str(hash_dir.relative_to(path)), ranks, len(files), sum(s for s, _ in files.values())
            )
        )
    return tuple(found)


def _inductor_caches(path: Path) -> tuple[InductorCache, ...]:
    """Inductor's own cache, and the ones vLLM points it at inside its trees."""
    candidates = [path / "inductor"]
    vllm = path / "vllm" / "torch_compile_cache"
    if vllm.is_dir():
        candidates.extend(sorted(p for p in vllm.rglob("inductor_cache") if p.is_dir() and not p.is_symlink()))
    found = []
    for directory in candidates:
        if not directory.is_dir() or directory.is_symlink():
            continue
        files = list_files(directory)
        fxgraph = sum(_count_dirs(shard) for shard in _subdirs(directory / "fxgraph"))
        found.append(
            InductorCache(
                str(directory.relative_to(path)),
                fxgraph,
                _count_dirs(directory / "aotautograd"),
                len(files),
                sum(size for size, _ in files.values()),
            )
        )
    return tuple(found)


def _factor_changes(dirs: tuple[VllmCacheDir, ...]) -> tuple[FactorChange, ...]:
    """For each rank and prefix that vLLM hashed more than one way, what differs from the first."""
    groups: dict[tuple[str, str], list[VllmCacheDir]] = {}
    for directory in dirs:
        if directory.factors is not None:
            groups.setdefault((directory.rank, directory.prefix), []).append(directory)
    changes = []
    for (rank, prefix), group in sorted(groups.items()):
        first = group[0]
        before = _flatten(first.factors)
        for other in group[1:]:
            after = _flatten(other.factors)
            for name in sorted(before.keys() | after.keys()):
                if before.get(name, _ABSENT) != after.get(name, _ABSENT):
                    changes.append(
                        FactorChange(
                            rank,
                            prefix,
                            first.hash,
                            other.hash,
                            name,
                            before.get(name, _ABSENT),
                            after.get(name, _ABSENT),
                        )
                    )
    return tuple(changes)


_ABSENT = "(absent)"


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping):
        flat: dict[str, Any] = {}
        for name, item in value.items():
            flat.update(_flatten(item, f"{prefix}{name}."))
        return flat
    return {prefix.rstrip("."): value}


def _factors(path: Path) -> Mapping[str, Any] | None:
    """What vLLM wrote in ``path``; a link there (to anywhere) is not read."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(descriptor, "rb") as handle:
            data = json.loads(handle.read(1 << 20))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _subdirs(path: Path) -> list[Path]:
    try:
        return sorted(p for p in path.iterdir() if p.is_dir() and not p.is_symlink())
    except (FileNotFoundError, NotADirectoryError):
        return []


def _count_dirs(path: Path) -> int:
    return len(_subdirs(path))
