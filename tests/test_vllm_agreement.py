"""cachekeeper's compile key agrees with vLLM 0.33.0's own, measured with vLLM's own code.

Each engine argument and environment variable in tests/vllm_agreement.py is flipped alone against
a base, and vLLM itself (tests/vllm_probe.py, in the vLLM venv) says whether its cache key moved:
the config hash, the env hash, and Inductor's hash, the parts of vLLM's key a CPU machine can
compute. The test
asserts that cachekeeper's compile key changes exactly when vLLM's does, apart from the short
lists there where cachekeeper is deliberately finer (FINER) or coarser (COARSER), each with its
reason. The rule file is compared with the lists vLLM computes, `vllm serve` command lines are
read with vLLM's own parser, and every cache location vLLM resolves must lie inside the artifact
once activate() has run (in the vLLM venv's python) with HOME an empty directory.

The first run builds .venv-vllm (tests/vllm_env.py: about 2 minutes, 2.5 GB, cached between runs).
After that the module costs about 110 s of CPU, under a minute on 2 idle cores (about 2 minutes
measured on a loaded one): vLLM's import costs ~8 s of CPU per process, and there is one process
per distinct environment (12 for the probe, run two at a time, and one, vLLM-free, for
activate()); test_vllm_probe_smoke.py reads the same run.
Skipped with the reason where the venv cannot be made (no package index, CACHEKEEPER_VLLM_ENV=0);
with CI set (.ci/run sets it), that is a failure instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cachekeeper import vllm_rules
from cachekeeper.serve_command import read_plain

from .vllm_agreement import (
    COARSER,
    ENV_FLIPS,
    FINER,
    MODEL,
    SERVE_COMMANDS,
    SHA,
    Flip,
    compile_key,
    snapshot_key,
    vllm_moved,
)

pytestmark = pytest.mark.vllm

# --- agreement -----------------------------------------------------------------------------------


def _agreement(flips: list[tuple[Flip, dict[str, Any], dict[str, Any]]], kind: str) -> list[str]:
    """The flips where cachekeeper and vLLM disagree other than as documented."""
    wrong = []
    for flip, flipped, against in flips:
        theirs = vllm_moved(flipped, against)
        if kind == "engine":
            ours_moved = compile_key(flip.change, {}) != compile_key(flip.base, {})
        else:
            ours_moved = compile_key({}, flip.change) != compile_key({}, flip.base)
        expected = (True, False) if flip.label in FINER else (False, True) if flip.label in COARSER else None
        if expected is not None and (ours_moved, theirs) != expected:
            wrong.append(
                f"{flip.label}: documented as {'finer' if flip.label in FINER else 'coarser'}, "
                f"but cachekeeper moved={ours_moved}, vLLM moved={theirs}"
            )
        elif expected is None and ours_moved != theirs:
            wrong.append(f"{flip.label}: cachekeeper's compile key moved={ours_moved}, vLLM's moved={theirs}")
    return wrong


def test_it_is_vllm_0_33_that_answers_and_the_rules_cover_it(vllm_measured: dict[str, Any]) -> None:
    versions = {answer["vllm"] for answer in vllm_measured["answers"] if answer.get("ok")}
    assert versions == {"0.33.0"}
    rules = vllm_rules.rules_for("0.33.0")
    assert rules is not None and rules.file == "0.33.toml"


def test_the_compile_key_moves_exactly_when_vllms_key_moves_for_every_engine_argument(
    vllm_measured: dict[str, Any],
) -> None:
    flips = vllm_measured["engine"]
    assert len({flip.label.split(".")[0] for flip, _, _ in flips}) >= 30
    assert _agreement(flips, "engine") == []
    # Not vacuous: both kinds of flip are here, and vLLM answered each.
    moved = [flip.label for flip, a, b in flips if vllm_moved(a, b)]
    assert len(moved) >= 30 and len(flips) - len(moved) >= 30


def test_every_engine_argument_the_rules_ignore_is_measured_and_leaves_vllms_key_alone(
    vllm_measured: dict[str, Any],
) -> None:
    rules = vllm_rules.rules_for("0.33.0")
    assert rules is not None
    labels = {flip.label: (a, b) for flip, a, b in vllm_measured["engine"]}
    assert rules.ignored_engine_args <= labels.keys()
    for name in sorted(rules.ignored_engine_args):
        flipped, against = labels[name]
        assert not vllm_moved(flipped, against), name


def test_the_compile_key_moves_exactly_when_vllms_key_moves_for_every_variable(vllm_measured: dict[str, Any]) -> None:
    flips = vllm_measured["env"]
    assert len(flips) >= 15
    assert _agreement(flips, "env") == []
    # Not vacuous: vLLM's key moved for the first group and not for the quiet one.
    assert [flip.label for flip, a, b in flips if vllm_moved(a, b)] == [flip.label for flip in ENV_FLIPS]


def test_memory_arguments_key_the_snapshot_but_not_the_compiled_code(vllm_measured: dict[str, Any]) -> None:
    rules = vllm_rules.rules_for("0.33.0")
    assert rules is not None
    labels = {flip.label: (a, b) for flip, a, b in vllm_measured["engine"]}
    for name in sorted(rules.memory_engine_args):
        flipped, against = labels[name]
        assert not vllm_moved(flipped, against), name
        change = next(flip.change for flip, _, _ in vllm_measured["engine"] if flip.label == name)
        assert compile_key(change, {}) == compile_key({}, {}), name
        assert snapshot_key(change) != snapshot_key({}), name


# --- the rule file against vLLM itself -------------------------------------------------------------


def test_the_rule_file_lists_what_vllm_computes(vllm_measured: dict[str, Any]) -> None:
    extract = vllm_measured["base"]["extract"]
    rules = vllm_rules.rules_for(vllm_measured["base"]["vllm"])
    assert rules is not None
    assert sorted(rules.ignored_env) == extract["env_ignore_literal"]
    assert sorted(rules.hashed_env) == sorted(extract["env_hashed"] + extract["env_hashed_unknown_to_envs"])
    assert rules.per_pod_env <= rules.hashed_env
    fields = set(extract["engine_args_fields"])
    for name in rules.ignored_engine_args | rules.kept_engine_args | rules.memory_engine_args:
        assert name.split(".")[0] in fields, name
    assert rules.memory_engine_args <= rules.ignored_engine_args
    assert not rules.frontend_args & fields


# --- caches inside the artifact ------------------------------------------------------------------

# Every location the probe resolves, and where it must be once activate() has run.
IN_COMPILE_ARTIFACT = {
    "vllm_cache_root",
    "vllm_assets_cache",
    "vllm_xla_cache",
    "torch_compile_cache",
    "torch_aot_compile",
    "modelinfos",
    "startup_plan",
    "deep_gemm",
    "outlines",
    "flashinfer_workspace",
    "flashinfer_jit",
    "flashinfer_cubins",
    "flashinfer_autotune_v1",
    "flashinfer_autotune_v2",
    "triton_cache",
    "torch_extensions",
    "minfer_fmha_sm100",
    "minfer_mm_sparse_attn",
    "torchinductor_cache",
}
IN_WEIGHTS = {"hf_hub_cache"}
# Not caches: where vLLM keeps its usage-stats id (~/.config/vllm) and its RPC sockets ($TMPDIR).
NOT_CACHES = {"vllm_config_root", "vllm_rpc_base_path"}


def test_activate_keys_by_vllm_0_33_rules_and_hands_back_what_it_keyed(vllm_measured: dict[str, Any]) -> None:
    activation = vllm_measured["activation"]
    assert activation["vllm"] == "0.33.0"
    assert "-vllm0.33.0-" in activation["keys"]["compile"]
    assert activation["engine_args"] == {"model": MODEL, "revision": SHA, "max_model_len": 1024}


def test_every_cache_vllm_resolves_lies_inside_the_artifact(vllm_measured: dict[str, Any]) -> None:
    located = vllm_measured["located"]
    assert located["ok"], located.get("error")
    paths = located["paths"]
    assert set(paths) == IN_COMPILE_ARTIFACT | IN_WEIGHTS | NOT_CACHES, "a new cache location: decide where it goes"
    compile_dir = Path(vllm_measured["activation"]["paths"]["compile"]).resolve()
    weights_dir = Path(vllm_measured["activation"]["paths"]["weights"]).resolve()
    outside = {
        name: paths[name] for name in IN_COMPILE_ARTIFACT if not Path(paths[name]).resolve().is_relative_to(compile_dir)
    }
    assert outside == {}
    assert Path(paths["hf_hub_cache"]).resolve().is_relative_to(weights_dir)
    # Nothing was resolved to, or created in, the empty HOME.
    home = vllm_measured["home"]
    assert [name for name, path in paths.items() if Path(path).resolve().is_relative_to(home.resolve())] == [
        "vllm_config_root"
    ]


def _inside(path: str, directory: Path) -> bool:
    return Path(path).resolve().is_relative_to(directory)


def test_the_variables_activate_sets_move_no_vllm_hash(vllm_measured: dict[str, Any]) -> None:
    assert vllm_measured["located"]["env_hash"] == vllm_measured["bare"]["env_hash"]
    assert compile_key({}, vllm_measured["activation"]["env"]) == compile_key({}, {})


# --- vllm serve command lines ------------------------------------------------------------------


def test_vllm_serve_command_lines_read_alike_with_vllms_parser_and_without(vllm_measured: dict[str, Any]) -> None:
    for command, read in zip(SERVE_COMMANDS, vllm_measured["serve_args"]["read"], strict=True):
        assert read is not None and read["parser"] == "vllm", command
        plain = read_plain(command[2:])
        assert (read["model"], read["revision"], read["engine"]) == (plain.model, plain.revision, plain.engine), command


def test_the_plain_reader_drops_exactly_the_servers_own_options(vllm_measured: dict[str, Any]) -> None:
    rules = vllm_rules.rules_for("0.33.0")
    assert rules is not None
    assert sorted(rules.frontend_args) == vllm_measured["serve_args"]["frontend_args"]
