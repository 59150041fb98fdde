"""A boot that hit records an inner_miss when vLLM compiled anew inside the artifact all the same;
stats gives the inner-miss rate per model, inspect the factors that differed. vLLM's directories
are laid out here as vLLM 0.33 lays them out (cachekeeper/vllm_caches.py)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

import cachekeeper
from cachekeeper import journal
from cachekeeper.cache import open_cache
from cachekeeper.inspection import inspect_artifact
from cachekeeper.records import Kind
from cachekeeper.stats import stats
from cachekeeper.store import Root

from .helpers import run_cli

FACTORS = {"env": {"VLLM_USE_AOT_COMPILE": True, "VLLM_PP_LAYER_PARTITION": None}, "config_hash": "aaaa"}


def compile_in(vllm_root: str, digest: str, factors: dict | None) -> None:
    """What vLLM leaves when it compiles: a per-backend hash directory, or an AOT one (no factors)."""
    base = Path(vllm_root) / "torch_compile_cache"
    if factors is None:
        directory = base / "torch_aot_compile" / digest / "rank_0_0"
        directory.mkdir(parents=True)
        (directory / "model").write_bytes(b"m")
        return
    directory = base / digest / "rank_0_0" / "backbone"
    directory.mkdir(parents=True)
    (directory / "cache_key_factors.json").write_text(json.dumps(factors))
    (directory / "vllm_compile_cache.py").write_text("{}")


def records_of(root: Path, kind: Kind) -> list:
    found = []
    for path in journal.journal_files(Root(root)):
        found.extend(record for record in journal.read_journal(path).records if record.kind is kind)
    return sorted(found, key=lambda record: record.at)  # each boot writes a journal of its own


def test_a_hit_in_which_vllm_compiles_anew_is_recorded_with_the_factors_that_differ(root, caplog):
    with cachekeeper.activate(root) as built:
        compile_in(os.environ["VLLM_CACHE_ROOT"], "1111111111", FACTORS)  # the build: no inner miss
    with cachekeeper.activate(root) as warm:
        assert warm.hit("compile")  # vLLM finds its own cache: nothing new
    changed = {**FACTORS, "env": {**FACTORS["env"], "VLLM_PP_LAYER_PARTITION": "1,1"}, "config_hash": "bbbb"}
    with caplog.at_level(logging.WARNING, logger="cachekeeper"), cachekeeper.activate(root) as missed:
        assert missed.hit("compile")
        compile_in(os.environ["VLLM_CACHE_ROOT"], "2222222222", changed)
    key = str(built.keys["compile"])
    [record] = records_of(root, Kind.INNER_MISS)
    assert (record.layer, record.key, record.dirs) == ("compile", key, ("2222222222",))
    assert record.factors == (("config_hash", "aaaa", "bbbb"), ("env.VLLM_PP_LAYER_PARTITION", None, "1,1"))
    assert "vLLM compiled again inside it" in caplog.text and "env.VLLM_PP_LAYER_PARTITION" in caplog.text

    # An AOT directory (no factors written) is an inner miss too.
    with cachekeeper.activate(root):
        compile_in(os.environ["VLLM_CACHE_ROOT"], "f" * 64, None)
    aot = records_of(root, Kind.INNER_MISS)[-1]
    assert aot.dirs == ("torch_aot_compile/" + "f" * 64,) and aot.factors == ()

    cache = open_cache(root)  # folds the journals
    [model] = stats(cache.manifest).models
    assert (model.compile_hits, model.inner_misses, model.inner_miss_rate) == (3, 2, 2 / 3)
    inspection = inspect_artifact(cache.manifest, cache.roots, key)
    assert inspection.inner_misses == 2
    assert {(c.factor, c.old, c.new) for c in inspection.factor_changes} == {
        ("config_hash", "aaaa", "bbbb"),
        ("env.VLLM_PP_LAYER_PARTITION", None, "1,1"),
    }


@pytest.mark.slow
def test_stats_and_inspect_say_so_on_the_command_line(root):
    with cachekeeper.activate(root) as built:
        compile_in(os.environ["VLLM_CACHE_ROOT"], "1111111111", FACTORS)
    with cachekeeper.activate(root):
        compile_in(os.environ["VLLM_CACHE_ROOT"], "3333333333", {**FACTORS, "config_hash": "cccc"})
    shown = run_cli("--root", str(root), "stats", "--json")
    assert shown.returncode == 0, shown.stderr
    [model] = json.loads(shown.stdout)["models"]
    assert (model["compile_hits"], model["inner_misses"], model["inner_miss_rate"]) == (1, 1, 1.0)
    human = run_cli("--root", str(root), "stats")
    assert "inner-miss rate 100%" in human.stdout
    inspected = run_cli("--root", str(root), "inspect", str(built.keys["compile"]))
    assert "1 boot(s) hit this key, yet vLLM compiled anew inside it" in inspected.stdout
    assert "config_hash: aaaa → cccc" in inspected.stdout


def test_a_build_records_no_inner_miss_whatever_vllm_writes(root):
    with cachekeeper.activate(root):
        compile_in(os.environ["VLLM_CACHE_ROOT"], "1111111111", FACTORS)
        compile_in(os.environ["VLLM_CACHE_ROOT"], "2222222222", {**FACTORS, "config_hash": "x"})
    assert records_of(root, Kind.INNER_MISS) == []


def test_variable_values_vllm_wrote_are_digests_unless_harmless(root):
    secret = {**FACTORS, "env": {**FACTORS["env"], "VLLM_BUILD_URL": "https://user:token@ci/1"}}
    with cachekeeper.activate(root):
        compile_in(os.environ["VLLM_CACHE_ROOT"], "1111111111", secret)
    with cachekeeper.activate(root):
        rotated = {**secret, "env": {**secret["env"], "VLLM_BUILD_URL": "https://user:other@ci/2"}}
        compile_in(os.environ["VLLM_CACHE_ROOT"], "2222222222", rotated)
    [record] = records_of(root, Kind.INNER_MISS)
    [(name, old, new)] = record.factors
    assert name == "env.VLLM_BUILD_URL" and old.startswith("sha256:") and new.startswith("sha256:") and old != new
    for path in journal.journal_files(Root(root)):
        assert "token@" not in path.read_text() and "other@" not in path.read_text()
