"""Key derivation: pure, stable, and sensitive to exactly the facts each layer lists."""

from __future__ import annotations

import copy
import json
import os
import pickle
import subprocess
import sys

import pytest

from cachekeeper.errors import UnknownKeyError
from cachekeeper.facts import Facts, Source
from cachekeeper.keys import ABSENT, CacheKey, derive_key, derive_keys, explain, parse_key
from cachekeeper.layers import COMPILE, DEFAULT_LAYERS, SNAPSHOT, WEIGHTS, Layer, layer_named

from .helpers import H100_FACTS, facts


def _changed(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, tuple):
        return (*value, 8)
    return f"{value}-changed"


def _keyed_names(layer: Layer) -> list[str]:
    return [name for name in H100_FACTS if layer.selector(facts())(name)]


CASES = [(layer.name, name) for layer in DEFAULT_LAYERS for name in _keyed_names(layer)]


@pytest.mark.parametrize(("layer_name", "fact"), CASES)
def test_changing_one_keyed_fact_changes_the_key_and_explain_names_only_it(layer_name, fact):
    layer = layer_named(layer_name)
    before = derive_key(layer, facts())
    after = derive_key(layer, facts(**{fact.replace(".", "__"): _changed(H100_FACTS[fact])}))
    assert str(before) != str(after)
    changed = [change.name for change in explain(before, after)]
    if layer.follows_vllm and fact == "vllm":
        # Another vLLM brings other rules (here none: the conservative rule), so the variables vLLM
        # 0.33 does not hash join the key: VLLM_USE_V1 is unknown to 0.33.
        assert changed == ["env.VLLM_USE_V1", "vllm"]
    else:
        assert changed == [fact]


NOT_KEYED = [(layer.name, name) for layer in DEFAULT_LAYERS for name in H100_FACTS if not layer.selector(facts())(name)]


@pytest.mark.parametrize(("layer_name", "fact"), NOT_KEYED)
def test_a_fact_the_layer_does_not_list_leaves_its_key_alone(layer_name, fact):
    layer = layer_named(layer_name)
    changed = facts(**{fact.replace(".", "__"): _changed(H100_FACTS[fact])})
    assert derive_key(layer, facts()) == derive_key(layer, changed)


def test_every_layer_keys_something_and_the_rules_differ():
    assert set(_keyed_names(layer_named(WEIGHTS))) == {"model", "model.revision"}
    compile_names = set(_keyed_names(layer_named(COMPILE)))
    snapshot_names = set(_keyed_names(layer_named(SNAPSHOT)))
    assert compile_names < snapshot_names
    assert {"gpu.arch", "gpu.name", "driver.branch", "vllm", "model.revision"} <= compile_names
    assert {"driver.version", "gpu.memory_mib", "image", "engine.port"} <= snapshot_names - compile_names
    # vLLM 0.33 does not know VLLM_USE_V1: its compile key leaves it out, a memory snapshot does not.
    assert "env.VLLM_USE_V1" in snapshot_names - compile_names


def test_weights_do_not_change_with_the_gpu_or_the_driver():
    before = derive_key(layer_named(WEIGHTS), facts())
    after = derive_key(
        layer_named(WEIGHTS),
        facts(gpu__arch="sm_100", gpu__name="NVIDIA B200", driver__version="590.1", driver__branch="590"),
    )
    assert before == after


def test_a_listed_fact_that_is_missing_is_keyed_as_unknown_and_marked_unverified():
    partial = Facts(tuple(fact for fact in facts() if fact.name != "driver.branch"))
    key = derive_key(layer_named(COMPILE), partial)
    assert key.unverified == ("driver.branch",)
    assert key != derive_key(layer_named(COMPILE), facts())


def test_sources_do_not_change_keys():
    declared = Facts.from_values(dict(H100_FACTS), Source.DECLARED)
    assert derive_keys(declared) == derive_keys(facts())


def test_key_strings_are_readable_safe_and_parse_back():
    keys = derive_keys(facts())
    assert str(keys[COMPILE]).startswith("compile-sm90-cu128-vllm0.33.0-")
    assert str(keys[WEIGHTS]).startswith("weights-qwen2.5-0.5b-instruct-aaaaaaaa-")
    assert str(keys[SNAPSHOT]).startswith("snapshot-sm90-drv580.159.04-vllm0.33.0-")
    for layer, key in keys.items():
        assert parse_key(str(key)) == (layer, key.digest)
        assert len(key.digest) == 16
        assert all(c.isalnum() or c in "-._" for c in str(key)) and str(key) == str(key).lower()


def test_a_cpu_machine_gets_a_readable_key_too():
    cpu = facts(gpu__arch="none", gpu__name="none", cuda__runtime="cpu", vllm="none", torch="2.13.0+cpu")
    assert str(derive_key(layer_named(COMPILE), cpu)).startswith("compile-cpu-torch2.13.0-")


@pytest.mark.parametrize("text", ["", "compile", "compile-xyz", "Compile-abc-0123456789abcdef", "../x", "a-0123"])
def test_malformed_keys_are_refused(text):
    with pytest.raises(UnknownKeyError):
        parse_key(text)


def test_explain_shows_absent_facts_and_type_changes():
    old = derive_key(layer_named(COMPILE), facts())
    with_new_env = derive_key(layer_named(COMPILE), facts(env__TORCH_CUDA_ARCH_LIST="9.0"))
    assert [(c.name, c.old, c.new) for c in explain(old, with_new_env)] == [("env.TORCH_CUDA_ARCH_LIST", ABSENT, "9.0")]
    as_bool = derive_key(layer_named(COMPILE), facts(engine__max_model_len=True))
    one = derive_key(layer_named(COMPILE), facts(engine__max_model_len=1))
    assert one != as_bool and [c.name for c in explain(one, as_bool)] == ["engine.max_model_len"]
    assert explain(old, old) == ()


def test_the_same_facts_give_the_same_keys_in_other_processes_and_hash_seeds():
    here = {layer: str(key) for layer, key in derive_keys(facts()).items()}
    script = (
        "import json; from tests.helpers import facts; from cachekeeper.keys import derive_keys;"
        "print(json.dumps({l: str(k) for l, k in derive_keys(facts()).items()}))"
    )
    for seed in ("0", "1", "12345"):
        result = subprocess.run(
            [sys.executable, "-c", script],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
            cwd=os.path.dirname(os.path.dirname(__file__)),
        )
        assert json.loads(result.stdout) == here


def test_known_digest_is_pinned():
    # If this fails, every cache in the field would go cold: change KEY_SCHEMA on purpose, then here.
    declared = Facts.from_values({"model": "org/m", "model.revision": "b" * 40}, Source.DECLARED)
    assert str(derive_key(layer_named(WEIGHTS), declared)) == "weights-m-bbbbbbbb-b85d82e895dee544"


def test_a_key_is_an_immutable_value_equal_by_its_string_alone():
    key = derive_key(layer_named(COMPILE), facts())
    same = CacheKey(key.layer, key.label, key.digest)  # as a key read back from its string is
    assert key == same and hash(key) == hash(same) and key.facts != same.facts
    assert key != derive_key(layer_named(COMPILE), facts(torch="9.9.9"))
    with pytest.raises(AttributeError):
        key.digest = "0" * 16
    with pytest.raises(AttributeError):
        key.facts.items = ()
    assert Facts(reversed(tuple(key.facts))) == key.facts and len({key.facts, Facts(tuple(key.facts))}) == 1
    for value in (key, key.facts):  # copied and pickled as the dataclasses they were could be
        assert copy.deepcopy(value) == value == pickle.loads(pickle.dumps(value))
    assert pickle.loads(pickle.dumps(key)).facts == key.facts
