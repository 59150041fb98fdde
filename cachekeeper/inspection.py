"""``inspect``: what one artifact holds, down to the caches vLLM and torch keep inside it.

A compile artifact is one cachekeeper key, but vLLM keys its own cache too (vllm_caches.py): two
vLLM directories under one of our keys mean vLLM missed its own cache on some boot, and the
factors it wrote say why; boots that saw it happen recorded an ``inner_miss``. The layout read
here (vLLM 0.33)::

    vllm/torch_compile_cache/<hash10>/rank_<r>_<dp>/<prefix>/cache_key_factors.json, ...
    vllm/torch_compile_cache/torch_aot_compile/<hash64>/{inductor_cache/, rank_<r>_<dp>/model}
    inductor/{fxgraph/<2>/<key>/, aotautograd/<key>/}        (TORCHINDUCTOR_CACHE_DIR)
    triton/<kernel hash>/                                      (TRITON_CACHE_DIR)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import UnknownKeyError
from .facts import thaw
from .keys import parse_key
from .layers import WEIGHTS
from .manifest import Manifest
from .quarantine import Quarantined, entries, path_of
from .records import Kind
from .store import PUBLISHED, Artifact, Roots, artifact_path, list_files, read_sidecar
from .strikes import Strike, look, struck
from .uses import UseInfo, users
from .values import Value
from .vllm_caches import FactorChange, VllmAotDir, VllmCacheDir, aot_dirs, factor_changes, subdirs, vllm_dirs

QUARANTINED = "quarantined"
VLLM_SUBDIR = "vllm"  # where the compile layer points VLLM_CACHE_ROOT (layers.py)


class InductorCache(Value):
    relpath: str
    fxgraph: int  # FX graph cache entries
    aotautograd: int  # AOTAutograd cache entries
    files: int
    bytes: int


class Inspection(Value):
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
    inner_misses: int = 0  # boots that hit this key, yet vLLM compiled anew inside it

    def to_json(self) -> dict[str, Any]:
        a = self.artifact
        return {
            **{name: value for name, value in a.to_json().items() if name not in ("format", "relpath")},
            "state": self.state,
            "strikes": [strike._asdict() for strike in self.strikes],
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
            "factor_changes": [change.to_json() for change in self.factor_changes],
            "inner_misses": self.inner_misses,
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
    vllm_root = path / VLLM_SUBDIR
    vllm = vllm_dirs(vllm_root, relative_to=path) if walk else ()
    return Inspection(
        artifact=artifact,
        path=path,
        pinned=key in manifest.pinned(),
        users=tuple(users(root, layer, key)),
        dependents=tuple(manifest.dependents().get(key, ())),
        vllm=vllm,
        aot=aot_dirs(vllm_root, relative_to=path) if walk else (),
        inductor=_inductor_caches(path) if walk else (),
        triton_kernels=_count_dirs(path / "triton") if walk else 0,
        factor_changes=factor_changes(vllm),
        state=state,
        strikes=look(root, layer, key).strikes if struck(layer) and state == PUBLISHED else (),
        quarantined=quarantined,
        inner_misses=sum(1 for event in manifest.events(kinds=(Kind.INNER_MISS,)) if event.key == key),
    )


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
        fxgraph = sum(_count_dirs(shard) for shard in subdirs(directory / "fxgraph"))
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


def _count_dirs(path: Path) -> int:
    return len(subdirs(path))
