"""`cachekeeper run -- vllm serve MODEL ...` keys by the command line: what will run. Here vLLM is
not importable, so the plain reader reads it (tests/test_vllm_agreement.py compares it with
vLLM's own parser)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cachekeeper.errors import UsageError
from cachekeeper.serve_command import PLAIN_READER, read_plain, read_serve_command
from cachekeeper.target import parse_target

from .helpers import run_cli

MODEL = "Qwen/Qwen2.5-0.5B-Instruct"
SHA = "7ae557604adf67be50417f59c2c2f167def9a775"


def read(*arguments: str):
    return read_plain(list(arguments))


def test_only_vllm_serve_is_read():
    assert read_serve_command(["python", "serve.py"]) is None
    assert read_serve_command(["vllm", "bench", "x"]) is None
    found = read_serve_command(["/usr/local/bin/vllm", "serve", MODEL])
    assert found is not None and (found.model, found.parser) == (MODEL, PLAIN_READER)
    found = read_serve_command(["python3", "-m", "vllm.entrypoints.cli.main", "serve", MODEL])
    assert found is not None and found.model == MODEL


def test_values_flags_and_negations():
    found = read(MODEL, "--max-model-len", "8192", "--enforce-eager", "--no-enable-prefix-caching", "--dtype=half")
    assert found.model == MODEL and found.revision is None
    assert found.engine == {
        "max_model_len": 8192,
        "enforce_eager": True,
        "enable_prefix_caching": False,
        "dtype": "half",
    }
    found = read("--model", MODEL, "--revision", SHA, "--gpu-memory-utilization", "0.5", "--seed", "-1")
    assert (found.model, found.revision) == (MODEL, SHA)
    assert found.engine == {"gpu_memory_utilization": 0.5, "seed": -1}


def test_json_values_and_fields_of_dict_arguments():
    found = read(MODEL, "--compilation-config", '{"mode": 3, "cudagraph_capture_sizes": [1, 2]}')
    assert found.engine == {"compilation_config": {"mode": 3, "cudagraph_capture_sizes": [1, 2]}}
    found = read(MODEL, "-cc.mode=3", "--compilation-config.compile_sizes", "[1,2]")
    assert found.engine == {"compilation_config": {"mode": 3, "compile_sizes": [1, 2]}}
    # As vLLM 0.33's parser does: fields replace a JSON value of the same argument.
    found = read(MODEL, "--compilation-config", '{"cudagraph_capture_sizes": [1]}', "-cc.mode=3")
    assert found.engine == {"compilation_config": {"mode": 3}}


def test_short_options_and_the_optimization_level():
    found = read(MODEL, "-tp", "2", "-pp=2", "-q", "fp8", "-O3", "-ep")
    assert found.engine == {
        "tensor_parallel_size": 2,
        "pipeline_parallel_size": 2,
        "quantization": "fp8",
        "optimization_level": 3,
        "enable_expert_parallel": True,
    }
    assert read(MODEL, "-O", "0").engine == {"optimization_level": 0}


def test_the_servers_own_options_are_no_engine_arguments():
    found = read(MODEL, "--host", "0.0.0.0", "--port", "9000", "--api-key", "k", "--max-num-seqs", "8")
    assert found.engine == {"max_num_seqs": 8}


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ((MODEL, "--config", "serve.yaml"), "--config"),
        ((MODEL, "-zz", "1"), "unknown short option"),
        ((MODEL, "other"), "unexpected argument"),
        (("--model",), "needs a value"),
    ],
)
def test_what_cannot_be_read_is_refused_with_a_reason(arguments, message):
    with pytest.raises(UsageError, match=message):
        read(*arguments)


@pytest.fixture
def fake_vllm(tmp_path: Path) -> dict[str, str]:
    """A real executable named vllm that records its arguments and exits 0."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "vllm"
    script.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {tmp_path / "vllm-args"}\n')
    script.chmod(0o755)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


@pytest.mark.slow
def test_run_keys_a_vllm_serve_command_by_what_it_will_run_and_names_each_contradiction(root, tmp_path, fake_vllm):
    target = tmp_path / "cachekeeper.toml"
    target.write_text(
        f'[target]\ngpu = "cpu"\nmodel = "{MODEL}"\nrevision = "{SHA}"\nlayers = ["compile"]\n'
        "[target.engine]\nmax_model_len = 4096\nenforce_eager = true\n"
    )
    command = ["vllm", "serve", MODEL, "--revision", SHA, "--max-model-len", "8192", "--gpu-memory-utilization", "0.5"]
    ran = run_cli("--root", str(root), "run", "--json", "--target", str(target), "--", *command, env=fake_vllm)
    assert ran.returncode == 0, ran.stderr
    contradictions = [line for line in ran.stderr.splitlines() if "contradicts" in line]
    assert len(contradictions) == 3
    assert any("engine.max_model_len: 4096 → 8192" in line for line in contradictions)
    assert any("engine.enforce_eager: true → (absent)" in line for line in contradictions)
    assert any("engine.gpu_memory_utilization: (absent) → 0.5" in line for line in contradictions)
    assert (tmp_path / "vllm-args").read_text().split() == command[1:]  # the command ran as given
    [layer] = json.loads(ran.stdout.strip().splitlines()[-1])["layers"]

    # Keyed by the command line: the same key as a target that declares what the command says.
    same = tmp_path / "same.toml"
    same.write_text(
        f'[target]\ngpu = "cpu"\nmodel = "{MODEL}"\nrevision = "{SHA}"\nlayers = ["compile"]\n'
        "[target.engine]\nmax_model_len = 8192\ngpu_memory_utilization = 0.5\n"
    )
    printed = run_cli("--root", str(root), "fingerprint", "--json", "--target", str(same))
    assert json.loads(printed.stdout)["keys"]["compile"] == layer["key"]
    agreeing = run_cli("--root", str(root), "run", "--target", str(same), "--", *command, env=fake_vllm)
    assert agreeing.returncode == 0 and "contradicts" not in agreeing.stderr


def test_a_target_cannot_give_model_or_revision_as_engine_arguments(tmp_path):
    for name in ("model", "revision"):
        document = {"target": {"gpu": "cpu", "engine": {name: "x"}}}
        with pytest.raises(UsageError, match=f"{name} is not an engine argument"):
            parse_target(document, tmp_path / "cachekeeper.toml")
