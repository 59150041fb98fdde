"""The compile key follows vLLM's own rules for the vLLM version in the facts, and keys
conservatively for any other; the rules ship in the package and are read without TOML at boot.
(tests/test_vllm_agreement.py checks the rules against the real vLLM.)"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from cachekeeper import vllm_rules
from cachekeeper.facts import Facts, Source, engine_facts, env_facts
from cachekeeper.keys import derive_key, explain
from cachekeeper.layers import COMPILE, SNAPSHOT, layer_named
from cachekeeper.vllm_rules import generate

from .helpers import REPO_ROOT, facts


def _keys(vllm: str = "0.33.0", engine: dict | None = None, env: dict | None = None) -> tuple[str, str]:
    base = facts(vllm=vllm).without("engine.").without("env.")
    found = Facts(base.items).merged([*engine_facts(engine or {}), *env_facts(env or {}, Source.OBSERVED)])
    return str(derive_key(layer_named(COMPILE), found)), str(derive_key(layer_named(SNAPSHOT), found))


def _moves(layer: str, vllm: str, **kwargs) -> bool:
    index = 0 if layer == COMPILE else 1
    return _keys(vllm, **kwargs)[index] != _keys(vllm)[index]


def test_the_generated_tables_match_the_rule_files():
    assert generate.main(["--check"]) == 0, "run: python -m cachekeeper.vllm_rules.generate"


def test_importing_the_rules_parses_no_toml():
    code = "import sys, cachekeeper.vllm_rules as r; r.rules_for('0.33.0'); print('tomllib' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


@pytest.mark.parametrize(
    ("version", "covered"),
    [
        ("0.33.0", True),
        ("0.33.2", True),
        ("0.33.0+cu128", True),
        ("0.34.0", False),
        ("0.32.9", False),
        ("0.33.0rc1", False),  # a pre-release may differ from the release
        ("0.33.1.dev12+g0123abc", False),
        ("0.33.0.post1", False),
        ("none", False),
        ("unknown", False),
    ],
)
def test_rules_are_chosen_by_the_vllm_version(version, covered):
    found = vllm_rules.rules_for(version)
    assert (found is not None) is covered
    if covered:
        assert found.file == "0.33.toml" and found.read_from.startswith("vllm==0.33.0")


def test_memory_arguments_key_the_snapshot_and_not_the_compiled_code():
    for engine in ({"gpu_memory_utilization": 0.5}, {"kv_cache_memory_bytes": 2**30}, {"num_gpu_blocks_override": 9}):
        assert not _moves(COMPILE, "0.33.0", engine=engine), engine
        assert _moves(SNAPSHOT, "0.33.0", engine=engine), engine


def test_arguments_vllm_hashes_key_both():
    for engine in ({"max_num_batched_tokens": 4096}, {"cpu_offload_gb": 1}, {"enable_sleep_mode": True}):
        assert _moves(COMPILE, "0.33.0", engine=engine), engine
        assert _moves(SNAPSHOT, "0.33.0", engine=engine), engine


def test_a_field_of_a_dict_argument_follows_its_own_rule():
    assert not _moves(COMPILE, "0.33.0", engine={"compilation_config": {"cache_dir": "/elsewhere"}})
    assert _moves(COMPILE, "0.33.0", engine={"compilation_config": {"mode": 0}})
    # vLLM ignores it; a cache shared across its values crashes (vllm#53366): kept.
    spec = {"method": "ngram", "num_speculative_tokens": 3}
    assert _keys(engine={"speculative_config": spec}) != _keys(engine={"speculative_config": {**spec, "x": 1}})
    assert (
        _keys(engine={"speculative_config": spec})[0]
        != _keys(engine={"speculative_config": {**spec, "num_speculative_tokens": 5}})[0]
    )


def test_a_vllm_no_rule_file_covers_is_keyed_conservatively():
    for vllm in ("0.34.0", "none"):
        assert _moves(COMPILE, vllm, engine={"gpu_memory_utilization": 0.5}), vllm
        assert _moves(COMPILE, vllm, env={"VLLM_USE_V1": "0"}), vllm
        assert _moves(COMPILE, vllm, env={"TORCHINDUCTOR_COMPILE_THREADS": "4"}), vllm
    # What never changes compiled code is left out whatever the version.
    for vllm in ("0.33.0", "0.34.0"):
        assert not _moves(COMPILE, vllm, engine={"port": 9000, "host": "0.0.0.0"}), vllm


@pytest.mark.parametrize(
    ("variable", "value", "keyed_by_0_33"),
    [
        ("VLLM_USE_AOT_COMPILE", "0", True),  # vLLM hashes it
        ("VLLM_CONFIGURE_LOGGING", "0", True),  # hashed by vLLM 0.33 although it is about logging
        ("VLLM_COHERE2_ATTN_MOE_DUAL_STREAM_TOKEN_THRESHOLD", "7", True),  # "TOKEN" is no secret here
        ("CUDA_HOME", "/usr/local/cuda-13.0", True),  # the toolkit JIT builds use
        ("NVCC_THREADS", "4", True),
        ("VLLM_USE_V1", "0", False),  # unknown to vLLM 0.33
        ("VLLM_PORT", "9000", False),  # vLLM ignores it
        ("TORCHINDUCTOR_COMPILE_THREADS", "4", False),  # vLLM overwrites it with 1 at import
        ("VLLM_DP_RANK", "1", False),  # hashed by vLLM, but per pod
        ("VLLM_RAY_BUNDLE_INDICES", "0,1", False),  # Ray placement
        ("TORCHINDUCTOR_MAX_AUTOTUNE", "1", True),  # Inductor's switches: what vLLM misses
        ("TRITON_OVERRIDE_ARCH", "sm90", True),
        ("TRITON_PTXAS_PATH", "/usr/local/cuda/bin/ptxas", True),  # which ptxas: not a location
        ("TRITON_CACHE_DIR", "/x", False),
        ("TORCH_CUDA_ARCH_LIST", "9.0", True),
        ("HF_HUB_OFFLINE", "0", True),
        ("HF_HOME", "/elsewhere", False),  # where the weights come from
    ],
)
def test_variables_key_the_compiled_code_by_vllms_rules_and_what_vllm_misses(variable, value, keyed_by_0_33):
    assert _moves(COMPILE, "0.33.0", env={variable: value}) is keyed_by_0_33


def test_a_vllm_upgrade_explains_itself_with_the_variables_its_rules_bring_in():
    old = derive_key(layer_named(COMPILE), facts(vllm="0.33.0", env__VLLM_USE_V1="1"))
    new = derive_key(layer_named(COMPILE), facts(vllm="0.34.0", env__VLLM_USE_V1="1"))
    assert [change.name for change in explain(old, new)] == ["env.VLLM_USE_V1", "vllm"]


@pytest.mark.slow
def test_the_rule_files_ship_in_the_wheel(tmp_path):
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(REPO_ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if built.returncode != 0:
        pytest.skip(f"no wheel could be built here (no package index for hatchling?): {built.stderr[-300:]}")
    [wheel] = Path(tmp_path).glob("cachekeeper-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {"cachekeeper/vllm_rules/0.33.toml", "cachekeeper/vllm_rules/_tables.py"} <= set(names)
