"""Target files: what a deploy declares, and one clear message for each way to get it wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from cachekeeper import facts as f
from cachekeeper.errors import UsageError
from cachekeeper.target import find_target, load_target

FULL = """
[target]
gpu = "H100:2"
model = "Qwen/Qwen2.5-0.5B-Instruct"
revision = "main"
driver = "580.159.04"
python = "3.12.7"
image = "v3"
layers = ["weights", "compile", "snapshot"]

[target.packages]
vllm = "0.33.0"
torch = "2.9.0"

[target.engine]
max_model_len = 4096
compilation_config = { cudagraph_capture_sizes = [1, 2, 4] }

[target.env]
VLLM_USE_V1 = "1"
PATH = "/ignored/because/irrelevant"

[roots]
weights = "hf"

[layers.tokenizer_cache]
facts = ["model", "model.revision"]
env = ["TOKENIZERS_CACHE"]
"""


def test_a_full_target_declares_its_facts(tmp_path):
    target = load_target(_write(tmp_path / "cachekeeper.toml", FULL))
    declared = {fact.name: fact.value for fact in target.declared_facts()}
    assert declared[f.GPU_TYPE] == "H100"
    assert declared[f.GPU_ARCH] == "sm_90"
    assert declared[f.GPU_COUNT] == 2
    assert declared[f.DRIVER_BRANCH] == "580"
    assert declared[f.VLLM] == "0.33.0"
    assert declared["engine.compilation_config.cudagraph_capture_sizes"] == (1, 2, 4)
    assert declared["env.VLLM_USE_V1"] == "1"
    assert "env.PATH" not in declared
    assert f.GPU_NAME not in declared  # unknown to a deployer: inherited from an observation
    assert target.needs == ("weights", "compile", "snapshot")
    assert target.roots == {"weights": tmp_path / "hf"}
    assert [layer.name for layer in target.layers][-1] == "tokenizer_cache"


def test_a_cpu_target_needs_nothing_inherited_for_the_gpu(tmp_path):
    target = load_target(_write(tmp_path / "cachekeeper.toml", '[target]\ngpu = "cpu"\n'))
    declared = {fact.name: fact.value for fact in target.declared_facts()}
    assert declared[f.GPU_NAME] == declared[f.DRIVER] == f.NONE
    assert target.needs == ("compile",)


def test_pyproject_tool_table_is_read_and_found(tmp_path):
    _write(tmp_path / "pyproject.toml", '[project]\nname = "x"\n[tool.cachekeeper.target]\ngpu = "L4"\n')
    target = find_target(None, cwd=tmp_path)
    assert target is not None and target.gpu.name == "L4"


@pytest.mark.parametrize(
    ("gpu", "landings"),
    [
        ('"H100"', ["H100", "H200"]),  # Modal may run it on an H200
        ('"H100!"', ["H100"]),
        ('"B200+:2"', ["B200:2", "B300:2"]),
        ('["H100", "A100-80GB:2"]', ["H100", "H200", "A100-80GB:2"]),  # fallbacks, in order
        ('"cpu"', ["cpu"]),
    ],
)
def test_gpu_means_every_landing_modal_may_give_it(tmp_path, gpu, landings):
    target = load_target(_write(tmp_path / "cachekeeper.toml", f"[target]\ngpu = {gpu}\n"))
    assert [landing.label for landing in target.landings] == landings
    assert (target.gpu, target.gpu_count) == (target.landings[0].gpu, target.landings[0].gpu_count)


def test_each_landing_declares_its_own_gpu_facts(tmp_path):
    target = load_target(_write(tmp_path / "cachekeeper.toml", '[target]\ngpu = ["B200+", "H100:2"]\n'))
    declared = {
        landing.label: {fact.name: fact.value for fact in target.declared_facts(landing)} for landing in target.landings
    }
    assert {label: (d[f.GPU_TYPE], d[f.GPU_ARCH], d[f.GPU_COUNT]) for label, d in declared.items()} == {
        "B200": ("B200", "sm_100", 1),
        "B300": ("B300", "sm_103", 1),
        "H100:2": ("H100", "sm_90", 2),
        "H200:2": ("H200", "sm_90", 2),
    }
    assert target.declared_facts() == target.declared_facts(target.landings[0])  # the first by default
    assert target.landing("b300") == target.landings[1]


def test_no_target_found_is_none_and_a_missing_explicit_one_is_an_error(tmp_path):
    assert find_target(None, cwd=tmp_path) is None
    with pytest.raises(UsageError, match="does not exist"):
        find_target(tmp_path / "nope.toml")


BAD = [
    ('[target\ngpu = "H100"', "not valid TOML"),
    ('gpu = "H100"\n', r"unknown setting\(s\) gpu in the top level"),
    ("[roots]\n", r"no \[target\] table"),
    ('[target]\nmodel = "a/b"\n', 'needs gpu = "H100"'),
    ('[target]\ngpu = "H101"\n', "unknown GPU type 'H101'"),
    ("[target]\ngpu = 100\n", "gpu: must be a GPU type"),
    ('[target]\ngpu = "H100"\nmodle = "a/b"\n', r"unknown setting\(s\) modle in \[target\]"),
    ('[target]\ngpu = "H100"\nmodel = "not a repo"\n', "not a Hugging Face repo id"),
    ('[target]\ngpu = "H100"\npackages = "vllm"\n', "packages in .target. must be a table"),
    ('[target]\ngpu = "H100"\n[target.packages]\nvllm = 33\n', "packages.vllm in .target. must be a non-empty string"),
    ('[target]\ngpu = "H100"\n[target.packages]\nnumpy = "2"\n', "does not key numpy"),
    ('[target]\ngpu = "H100"\n[target.engine]\nx = 2025-01-01\n', "engine argument x"),
    ('[target]\ngpu = "H100"\n[target.env]\nVLLM_X = true\n', "env.VLLM_X in .target. must be a string"),
    ('[target]\ngpu = "H100"\nlayers = ["weights"]\n', "needs a model for the weights layer"),
    ('[target]\ngpu = "H100"\nlayers = ["kernels"]\n', r"unknown layer\(s\) kernels"),
    ('[target]\ngpu = "H100"\nlayers = []\n', "non-empty list"),
    ('[target]\ngpu = "H100"\n[roots]\nkernels = "/x"\n', r"names unknown layer\(s\) kernels"),
    ('[target]\ngpu = "H100"\n[layers.Bad-Name]\nfacts = ["model"]\n', "new lowercase identifier"),
    ('[target]\ngpu = "H100"\n[layers.mine]\nlabel = ["model"]\n', "needs facts"),
    ('[target]\ngpu = "H100!!"\n', r"\[target\] gpu: GPU type 'H100!!': Modal takes '!' only after H100"),
    ('[target]\ngpu = "!H100"\n', r"\[target\] gpu: unknown GPU type '!H100'"),
    ('[target]\ngpu = "B200++"\n', r"\[target\] gpu: GPU type 'B200\+\+'.*write B200\+"),
    ("[target]\ngpu = []\n", r"\[target\] gpu: an empty list lands nowhere"),
    ('[target]\ngpu = ["H100", 3]\n', r"\[target\] gpu: entry 2 of the list must be a GPU type"),
    ('[target]\ngpu = ["H100", "H101"]\n', r"\[target\] gpu: entry 2 of the list: unknown GPU type 'H101'"),
]


@pytest.mark.parametrize(("body", "message"), BAD)
def test_bad_targets_name_the_file_and_the_problem_in_one_line(tmp_path, body, message):
    path = _write(tmp_path / "cachekeeper.toml", body)
    with pytest.raises(UsageError, match=message) as raised:
        load_target(path)
    assert str(path) in str(raised.value)
    assert "\n" not in str(raised.value)


def _write(path: Path, body: str) -> Path:
    path.write_text(body)
    return path
