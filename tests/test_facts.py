"""Collecting facts: no GPU, no torch import, revisions resolved from a real HF cache layout."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cachekeeper import facts as f
from cachekeeper import fingerprint
from cachekeeper.errors import RevisionError, UsageError
from cachekeeper.facts import Source, engine_facts, env_facts, is_relevant_env
from cachekeeper.fingerprint import cuda_runtime_in, observe
from cachekeeper.gpus import modal_gpu_type, parse_gpu

from .helpers import make_hf_model


def test_a_machine_without_nvml_gets_a_fingerprint_that_says_so():
    facts = observe()
    assert facts.value(f.GPU_NAME) == f.NONE
    assert facts.value(f.GPU_ARCH) == f.NONE
    assert facts.value(f.GPU_COUNT) == 0
    assert facts.value(f.DRIVER) == f.NONE
    assert facts.value(f.GPU_TYPE) == "cpu"
    assert facts[f.GPU_NAME].source is Source.OBSERVED


def test_package_versions_come_from_metadata_and_torch_is_never_imported():
    script = (
        "import sys, cachekeeper; facts = cachekeeper.observe(); "
        "assert 'torch' not in sys.modules and 'vllm' not in sys.modules, sorted(sys.modules); "
        "assert 'sqlalchemy' not in sys.modules; "
        "print(facts.value('torch'), facts.value('cuda.runtime'), facts.value('vllm'))"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    torch_version, runtime, vllm = result.stdout.split()
    import importlib.metadata

    assert torch_version == importlib.metadata.version("torch")
    assert runtime == ("cpu" if "+cpu" in torch_version else runtime)
    assert vllm == f.NONE


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("cuda: Optional[str] = '12.8'\nhip: Optional[str] = None\n", "12.8"),
        ("cuda = '13.0'\n", "13.0"),
        ("cuda: Optional[str] = None\nhip: Optional[str] = '6.2.41133'\n", "rocm6.2.41133"),
        ("cuda: Optional[str] = None\nhip: Optional[str] = None\n", "cpu"),
        ("__version__ = '2.9.0'\n", "cpu"),
        ('cuda = "12.4"\n', "12.4"),
        ("    cuda = '12.4'\ncudax = '1'\n", "cpu"),  # only a top-level assignment of cuda itself
        ("cuda = '12.4'  # a comment\n", "cpu"),
    ],
)
def test_the_torch_builds_cuda_runtime_is_read_from_its_version_file(text, expected):
    assert cuda_runtime_in(text) == expected


@pytest.mark.parametrize(
    ("name", "relevant"),
    [
        ("VLLM_USE_V1", True),
        ("TORCH_CUDA_ARCH_LIST", True),
        ("TORCHINDUCTOR_COMPILE_THREADS", True),
        ("TRITON_CACHE_AUTOTUNING", True),
        ("CUDA_VERSION", True),
        ("HF_HUB_OFFLINE", True),
        ("VLLM_CACHE_ROOT", False),
        ("TORCHINDUCTOR_CACHE_DIR", False),
        ("TRITON_CACHE_DIR", False),
        ("VLLM_PORT", False),
        ("VLLM_HOST_IP", False),
        ("VLLM_NIXL_SIDE_CHANNEL_HOST", False),
        ("CUDA_VISIBLE_DEVICES", False),
        ("VLLM_API_KEY", False),
        ("VLLM_LOGGING_LEVEL", False),
        ("TORCH_LOGS", False),
        ("VLLM_DP_RANK", False),
        ("TORCHELASTIC_RUN_ID", False),
        ("VLLM_ASSETS_CACHE", False),
        ("HOME", False),
        ("MODAL_TASK_ID", False),
    ],
)
def test_only_variables_that_change_compiled_code_are_facts(name, relevant):
    assert is_relevant_env(name) is relevant
    assert bool(env_facts({name: "x"})) is relevant


def test_env_facts_keep_values_in_the_clear_so_explain_can_name_them():
    assert [(x.name, x.value) for x in env_facts({"VLLM_USE_V1": "0", "PATH": "/bin"})] == [("env.VLLM_USE_V1", "0")]


def test_engine_arguments_are_flattened_and_frozen():
    facts = engine_facts({"max_model_len": 4096, "compilation_config": {"level": 3, "sizes": [1, 2]}})
    assert [(x.name, x.value) for x in facts] == [
        ("engine.compilation_config.level", 3),
        ("engine.compilation_config.sizes", (1, 2)),
        ("engine.max_model_len", 4096),
    ]


def test_engine_arguments_that_are_not_plain_values_are_refused():
    with pytest.raises(UsageError, match="engine argument dtype"):
        engine_facts({"dtype": object()})


def test_a_sha_revision_is_taken_as_declared(tmp_path):
    fact = fingerprint.resolve_revision("org/model", "c" * 40, tmp_path, {"HF_HUB_OFFLINE": "1"})
    assert (fact.value, fact.source) == ("c" * 40, Source.DECLARED)


def test_a_branch_is_resolved_offline_from_a_real_hf_cache_layout(tmp_path):
    sha = make_hf_model(tmp_path, "org/model", {"config.json": b"{}", "model.safetensors": b"weights"})
    fact = fingerprint.resolve_revision("org/model", "main", tmp_path, {"HF_HUB_OFFLINE": "1"})
    assert (fact.value, fact.source) == (sha, Source.RESOLVED)
    facts = observe(model="org/model", hf_cache=tmp_path)
    assert facts.value(f.MODEL_REVISION) == sha


def test_a_ref_whose_snapshot_is_gone_is_not_trusted(tmp_path):
    sha = make_hf_model(tmp_path, "org/model", {"config.json": b"{}"})
    import shutil

    shutil.rmtree(tmp_path / "models--org--model" / "snapshots" / sha)
    with pytest.raises(RevisionError, match="pin a 40-character commit sha"):
        fingerprint.resolve_revision("org/model", "main", tmp_path, {"HF_HUB_OFFLINE": "1"})


def test_an_unresolvable_revision_offline_says_what_to_do(tmp_path):
    with pytest.raises(RevisionError, match=r"cannot resolve revision 'v2' of org/model offline"):
        fingerprint.resolve_revision("org/model", "v2", tmp_path, {"HF_HUB_OFFLINE": "1"})


@pytest.mark.parametrize("model", ["not a repo", "/abs/path", "org/name/extra", ""])
def test_models_must_be_repo_ids(model, tmp_path):
    if model == "":
        assert observe(model=model).value(f.MODEL) == f.NONE
        return
    with pytest.raises(UsageError, match="repo id"):
        observe(model=model, hf_cache=tmp_path)


@pytest.mark.parametrize(
    ("spec", "name", "arch", "count"),
    [
        ("H100", "H100", "sm_90", 1),
        ("h100:8", "H100", "sm_90", 8),
        ("H100!", "H100", "sm_90", 1),
        ("A100", "A100-40GB", "sm_80", 1),
        ("A100-80GB:2", "A100-80GB", "sm_80", 2),
        ("A10G", "A10", "sm_86", 1),
        ("L40S", "L40S", "sm_89", 1),
        ("B200+", "B200", "sm_100", 1),
        ("cpu", "cpu", "none", 0),
    ],
)
def test_modal_gpu_types_parse(spec, name, arch, count):
    gpu, parsed_count = parse_gpu(spec)
    assert (gpu.name, gpu.arch, parsed_count) == (name, arch, count)


@pytest.mark.parametrize(
    "spec", ["H101", "", "H100:0", "H100:x", "cpu:2", "H100 H200", "H100:", "H100:8:2", "H100:²", ":8"]
)
def test_unknown_gpu_types_are_refused_with_the_list(spec):
    with pytest.raises(UsageError):
        parse_gpu(spec)


@pytest.mark.parametrize(
    ("device", "modal_type"),
    [
        ("NVIDIA H100 80GB HBM3", "H100"),
        ("NVIDIA H100 PCIe", "H100"),
        ("NVIDIA H200", "H200"),
        ("NVIDIA A100-SXM4-80GB", "A100-80GB"),
        ("NVIDIA A100-SXM4-40GB", "A100-40GB"),
        ("NVIDIA A10G", "A10"),
        ("NVIDIA L4", "L4"),
        ("NVIDIA L40S", "L40S"),
        ("Tesla T4", "T4"),
        ("NVIDIA B200", "B200"),
        ("NVIDIA RTX PRO 6000 Blackwell Server Edition", "RTX-PRO-6000"),
        ("none", "cpu"),
        ("NVIDIA GeForce RTX 4090", None),
    ],
)
def test_nvml_device_names_map_to_modal_types(device, modal_type):
    assert modal_gpu_type(device) == modal_type


def test_versions_read_from_dist_info_names_agree_with_importlib_metadata():
    import importlib.metadata
    import re

    found = fingerprint._dist_info_versions()
    names = {dist.metadata["Name"] for dist in importlib.metadata.distributions()}
    for name in names:  # the first on sys.path wins for both, as it does for imports
        assert found[re.sub(r"[-_.]+", "_", name).lower()] == importlib.metadata.version(name), name


@pytest.mark.parametrize("name", ["Zope..Interface", "a-_-b", "A__B", "x.-y", "flashinfer_python", "nvidia-ml-py", "a"])
def test_dist_names_are_compared_as_pep_503_normalizes_them(name):
    import re

    assert fingerprint._normalize(name) == re.sub(r"[-_.]+", "_", name).lower()


def test_a_package_earlier_on_sys_path_wins(tmp_path, monkeypatch):
    (tmp_path / "flashinfer_python-0.7.2.post1.dist-info").mkdir()
    (tmp_path / "torch-9.0.0.dist-info").mkdir()
    monkeypatch.syspath_prepend(str(tmp_path))
    versions = {fact.name: fact.value for fact in fingerprint.package_facts()}
    assert versions["flashinfer"] == "0.7.2.post1" and versions["torch"] == "9.0.0"
