"""inspect: vLLM's own cache directories inside a compile artifact, and the factors that made
vLLM miss its own cache under one of our keys; Inductor's entries for a torch-only artifact."""

from __future__ import annotations

import json

import pytest

from cachekeeper import uses
from cachekeeper.errors import UnknownKeyError
from cachekeeper.inspection import inspect_artifact
from cachekeeper.store import Root, Roots

from .helpers import put


def factors(vllm_use_v1: str, config_hash: str) -> dict:
    return {
        "env": {"VLLM_USE_V1": vllm_use_v1, "VLLM_ATTENTION_BACKEND": None},
        "config_hash": config_hash,
        "code_hash": "c0de",
        "compiler_hash": "1nd",
    }


def write(path, content: bytes = b"x") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)


def test_vllm_directories_and_why_vllm_missed_inside_our_key(root, manifest):
    record = put(root, manifest, "compile-sm90-00000000000000a1", age_days=1)
    cache = root / record.relpath / "vllm" / "torch_compile_cache"
    for hash_, use_v1, config in (("1a2b3c4d5e", "1", "cfg1"), ("9f8e7d6c5b", "0", "cfg2")):
        backbone = cache / hash_ / "rank_0_0" / "backbone"
        write(backbone / "cache_key_factors.json", json.dumps(factors(use_v1, config)).encode())
        write(backbone / "vllm_compile_cache.py", b"{}")
        write(backbone / "artifact_compile_range_1_8_subgraph_0", b"a" * 100)
    aot = cache / "torch_aot_compile" / ("ab" * 32)
    write(aot / "rank_0_0" / "model", b"m" * 50)
    write(aot / "inductor_cache" / "fxgraph" / "fa" / "fabc" / "entry", b"g")
    write(aot / "inductor_cache" / "aotautograd" / "aabc" / "entry", b"g")
    registration = uses.register(Root(root), "compile", record.key)
    try:
        found = inspect_artifact(manifest, Roots.at(root), record.key)
    finally:
        registration.release()

    assert [(d.hash, d.rank, d.prefix, d.files) for d in found.vllm] == [
        ("1a2b3c4d5e", "rank_0_0", "backbone", 3),
        ("9f8e7d6c5b", "rank_0_0", "backbone", 3),
    ]
    assert found.vllm[0].factors["config_hash"] == "cfg1"
    assert [(c.factor, c.old, c.new) for c in found.factor_changes] == [
        ("config_hash", "cfg1", "cfg2"),
        ("env.VLLM_USE_V1", "1", "0"),
    ]
    [aot_dir] = found.aot
    assert aot_dir.ranks == ("rank_0_0",) and aot_dir.files == 3
    [inductor] = found.inductor
    assert inductor.relpath.endswith("inductor_cache") and (inductor.fxgraph, inductor.aotautograd) == (1, 1)
    assert len(found.users) == 1 and not found.pinned


def test_a_torch_only_artifact_shows_inductor_and_triton_entries(root, manifest):
    record = put(root, manifest, "compile-cpu-00000000000000b1", age_days=1)
    inductor = root / record.relpath / "inductor"
    for key in ("fabc", "fdef"):
        write(inductor / "fxgraph" / key[1:3] / key / "0123", b"g")
    write(inductor / "aotautograd" / "aabc" / "entry", b"a")
    write(root / record.relpath / "triton" / "KERNELHASH" / "k.cubin", b"c")
    found = inspect_artifact(manifest, Roots.at(root), record.key)
    assert found.vllm == () and found.factor_changes == ()
    assert [(d.relpath, d.fxgraph, d.aotautograd) for d in found.inductor] == [("inductor", 2, 1)]
    assert found.triton_kernels == 1


def test_an_unknown_key_is_a_usage_error(root, manifest):
    with pytest.raises(UnknownKeyError, match="cachekeeper ls"):
        inspect_artifact(manifest, Roots.at(root), "compile-x-00000000000000ff")
