"""vLLM's own compile caches inside a compile artifact, and how two of its hashes differ.

A compile artifact is one cachekeeper key, but vLLM keys its own cache too, by a hash it can only
compute after tracing the model. A second vLLM hash directory under one of our keys means vLLM
missed its own cache on some boot (an environment variable, a source file, a config it hashes
changed): the factors it wrote (``cache_key_factors.json``) say which. The layout (vLLM 0.33),
under the directory ``VLLM_CACHE_ROOT`` points at::

    torch_compile_cache/<hash10>/rank_<r>_<dp>/<prefix>/cache_key_factors.json, ...
    torch_compile_cache/torch_aot_compile/<hash64>/{inductor_cache/, rank_<r>_<dp>/model}

``hash_dirs`` costs two directory listings: a boot takes it when it hits, and again at exit, to
record an ``inner_miss`` when vLLM compiled anyway (runtime/claims.py). ``inspect`` reads the rest.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from . import store
from .facts import SHOWN_ENV, conceal
from .values import Value

FACTORS_FILE = "cache_key_factors.json"
COMPILE_CACHE = "torch_compile_cache"
AOT = "torch_aot_compile"
ABSENT = "(absent)"


class VllmCacheDir(Value):
    """One of vLLM's per-backend cache directories: ``<hash>/rank_<r>_<dp>/<prefix>``."""

    hash: str
    rank: str
    prefix: str  # "backbone", "eagle_head", ...; "" when the rank directory holds the files
    relpath: str  # relative to the directory given to vllm_dirs
    files: int
    bytes: int
    factors: Mapping[str, Any] | None  # what vLLM hashed, where it wrote it


class VllmAotDir(Value):
    """One of vLLM's AOT-compile directories: ``torch_aot_compile/<hash>``."""

    hash: str
    relpath: str
    ranks: tuple[str, ...]
    files: int
    bytes: int


class FactorChange(Value):
    """A factor two of vLLM's directories under one key hashed differently: why vLLM missed."""

    rank: str
    prefix: str
    old_hash: str
    new_hash: str
    factor: str  # dotted path into cache_key_factors.json
    old: Any
    new: Any

    def to_json(self) -> dict[str, Any]:
        return self._asdict()


def hash_dirs(vllm_root: Path) -> frozenset[str]:
    """The names of vLLM's hash directories under ``vllm_root``: ``<hash10>`` for the per-backend
    tree, ``torch_aot_compile/<hash64>`` for the AOT tree."""
    base = vllm_root / COMPILE_CACHE
    names = {entry.name for entry in subdirs(base) if entry.name != AOT}
    names.update(f"{AOT}/{entry.name}" for entry in subdirs(base / AOT))
    return frozenset(names)


def vllm_dirs(vllm_root: Path, relative_to: Path | None = None) -> tuple[VllmCacheDir, ...]:
    """Every per-backend cache directory, with the factors vLLM wrote there."""
    relative_to = vllm_root if relative_to is None else relative_to
    found = []
    for hash_dir in subdirs(vllm_root / COMPILE_CACHE):
        if hash_dir.name == AOT:
            continue
        for rank_dir in subdirs(hash_dir):
            if not _is_rank(rank_dir.name):
                continue
            prefixes = [d for d in subdirs(rank_dir) if (d / FACTORS_FILE).is_file()]
            for directory in prefixes or [rank_dir]:
                files = store.list_files(directory)
                found.append(
                    VllmCacheDir(
                        hash=hash_dir.name,
                        rank=rank_dir.name,
                        prefix=directory.name if directory is not rank_dir else "",
                        relpath=str(directory.relative_to(relative_to)),
                        files=len(files),
                        bytes=sum(size for size, _ in files.values()),
                        factors=_factors(directory / FACTORS_FILE),
                    )
                )
    return tuple(found)


def aot_dirs(vllm_root: Path, relative_to: Path | None = None) -> tuple[VllmAotDir, ...]:
    relative_to = vllm_root if relative_to is None else relative_to
    found = []
    for hash_dir in subdirs(vllm_root / COMPILE_CACHE / AOT):
        files = store.list_files(hash_dir)
        ranks = tuple(d.name for d in subdirs(hash_dir) if _is_rank(d.name))
        found.append(
            VllmAotDir(
                hash_dir.name,
                str(hash_dir.relative_to(relative_to)),
                ranks,
                len(files),
                sum(size for size, _ in files.values()),
            )
        )
    return tuple(found)


def factor_changes(dirs: Iterable[VllmCacheDir]) -> tuple[FactorChange, ...]:
    """For each rank and prefix that vLLM hashed more than one way, what differs from the first."""
    changes: list[FactorChange] = []
    for group in _groups(dirs).values():
        for other in group[1:]:
            changes.extend(differences(group[0], other))
    return tuple(changes)


def new_factor_changes(dirs: Iterable[VllmCacheDir], new_hashes: Iterable[str]) -> tuple[FactorChange, ...]:
    """What differs between each directory of ``new_hashes`` and one that was there before it, of
    the same rank and prefix: why vLLM compiled again inside a warm artifact."""
    new = set(new_hashes)
    changes: list[FactorChange] = []
    for group in _groups(dirs).values():
        before = [d for d in group if d.hash not in new]
        for directory in group:
            if directory.hash in new and before:
                changes.extend(differences(before[0], directory))
    return tuple(changes)


def differences(old: VllmCacheDir, new: VllmCacheDir) -> list[FactorChange]:
    """The factors two directories of the same rank and prefix hashed differently."""
    before, after = _flatten(old.factors), _flatten(new.factors)
    return [
        FactorChange(old.rank, old.prefix, old.hash, new.hash, name, before.get(name, ABSENT), after.get(name, ABSENT))
        for name in sorted(before.keys() | after.keys())
        if before.get(name, ABSENT) != after.get(name, ABSENT)
    ]


def _is_rank(name: str) -> bool:
    """``rank_<r>_<dp>``."""
    parts = name.split("_")
    return len(parts) == 3 and parts[0] == "rank" and all(p.isascii() and p.isdigit() for p in parts[1:])


def _groups(dirs: Iterable[VllmCacheDir]) -> dict[tuple[str, str], list[VllmCacheDir]]:
    groups: dict[tuple[str, str], list[VllmCacheDir]] = {}
    for directory in dirs:
        if directory.factors is not None:
            groups.setdefault((directory.rank, directory.prefix), []).append(directory)
    return dict(sorted(groups.items()))


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping):
        flat: dict[str, Any] = {}
        for name, item in value.items():
            flat.update(_flatten(item, f"{prefix}{name}."))
        return flat
    return {prefix.rstrip("."): value}


def _factors(path: Path) -> Mapping[str, Any] | None:
    """What vLLM wrote in ``path``; a link there (to anywhere) is not read. vLLM writes the raw
    values of the variables it hashes (``"env"``): text values of variables not on SHOWN_ENV are
    digests from here on, as everywhere cachekeeper keeps or shows a variable (parsed switches,
    numbers and unset ones stay as they are: they carry no secret)."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(descriptor, "rb") as handle:
            data = json.loads(handle.read(1 << 20))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    env = data.get("env")
    if isinstance(env, dict):
        data["env"] = {
            str(name): conceal(str(name), value) if isinstance(value, str) and name not in SHOWN_ENV else value
            for name, value in env.items()
        }
    return data


def subdirs(path: Path) -> list[Path]:
    """The directories in ``path`` that are no links, in name order; none if it is no directory."""
    try:
        return sorted(p for p in path.iterdir() if p.is_dir() and not p.is_symlink())
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return []
