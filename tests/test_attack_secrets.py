"""Attack: secrets stored and printed. Values of variables such as ``…_PASSWD``, ``…_AUTH``,
``…_CREDENTIALS``, or a ``redis://:pw@host`` URL went into sidecars, journals, observations,
``fingerprint --json`` and ``check --json`` (so into CI logs). Now keyed values are stored and shown
as digests unless the variable is on a short list of harmless ones; engine arguments named like
credentials likewise. No secret may be found under the root, in the manifest, or in any output.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

import cachekeeper
from cachekeeper import uses
from cachekeeper.facts import DIGEST_PREFIX, SHOWN_ENV

from .adversary import invoke

SECRET = f"s3cr3t-{uuid.uuid4().hex}"
SPELLINGS = [
    "VLLM_API_KEY",
    "VLLM_PASSWD",
    "VLLM_DB_PASSWORD",
    "VLLM_AUTH",
    "TORCH_AUTH_TOKEN",
    "TRITON_CREDENTIALS",
    "CUDA_SECRET",
    "VLLM_S3_SECRET_ACCESS_KEY",
    "VLLM_S3_ACCESS_KEY_ID",
    "TORCHINDUCTOR_REDIS_PASSWORD",
    "VLLM_HF_TOKEN",
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "VLLM_Passwd",
    "vllm_api_key",
    "VLLM_WANDB_API_KEY",
    "VLLM_OPENAI_COOKIE",
    "TORCH_PROFILER_BEARER",
    "TRITON_REMOTE_CACHE_BACKEND",
    "VLLM_PLUGINS",
    "CUDA_MPS_PIPE_DIRECTORY",
    "VLLM_SIGNING_SALT",
]
URLS = {"VLLM_REDIS_URL": f"redis://:{SECRET}@cache:6379/0", "TORCHINDUCTOR_REDIS_URL": f"rediss://u:{SECRET}@h"}


@pytest.fixture
def secret_environment(monkeypatch) -> dict[str, str]:
    values = {name: SECRET for name in SPELLINGS} | {name: f"{SECRET}-json" for name in ["VLLM_CONFIG_JSON"]} | URLS
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


def _found_under(path: Path) -> list[str]:
    return [str(p) for p in path.rglob("*") if p.is_file() and not p.is_symlink() and SECRET.encode() in p.read_bytes()]


def test_no_secret_value_is_stored_or_printed(root, tmp_path, secret_environment, monkeypatch):
    target = tmp_path / "cachekeeper.toml"
    env_table = "\n".join(f'{name} = "{value}"' for name, value in secret_environment.items() if name.isupper())
    target.write_text(
        '[target]\ngpu = "cpu"\nlayers = ["compile", "snapshot"]\n'
        f'[target.engine]\nhf_token = "{SECRET}"\napi_key = "{SECRET}"\nmax_model_len = 128\n'
        f"[target.env]\n{env_table}\n"
    )
    monkeypatch.chdir(tmp_path)
    with cachekeeper.activate(root, target=target) as ck:
        keys = [str(key) for key in ck.keys.values()]
    uses.release_all()
    with cachekeeper.activate(root, target=target, engine={"hf_token": "other", "max_model_len": 64}) as other:
        pass
    uses.release_all()
    outputs = [
        invoke("--root", str(root), *command)
        for command in [
            ("fingerprint", "--json"),
            ("fingerprint",),
            ("check", "--json"),
            ("check",),
            ("snapshot-tag", "--json"),
            ("ls", "--json"),
            ("sync", "--json"),
            ("stats", "--json"),
            ("verify", "--json"),
            ("inspect", keys[0], "--json"),
            ("inspect", keys[0]),
            ("explain", keys[0], str(other.keys["compile"]), "--json"),
            ("explain", keys[0], str(other.keys["compile"])),
            ("doctor", "--json"),
        ]
    ]
    for outcome in outputs:
        assert SECRET not in outcome.out + outcome.err, outcome
    assert _found_under(root) == []  # sidecars, checksums, journals, uses, the SQLite manifest
    fingerprint = json.loads(outputs[0].out)
    for name, value in fingerprint["facts"].items():
        if name.startswith("env.") and name[4:] not in SHOWN_ENV:
            assert value.startswith(DIGEST_PREFIX), (name, value)
    assert fingerprint["facts"]["engine.hf_token"].startswith(DIGEST_PREFIX)
    changes = json.loads(outputs[11].out)["changes"]
    assert "engine.hf_token" in {change["fact"] for change in changes}  # explain still says *that* it changed


def test_a_changed_secret_changes_the_key_without_showing_either_value(root, monkeypatch):
    monkeypatch.setenv("VLLM_SIGNING_SALT", "first-" + SECRET)
    with cachekeeper.activate(root, layers=["compile"]) as first:
        pass
    monkeypatch.setenv("VLLM_SIGNING_SALT", "second-" + SECRET)
    with cachekeeper.activate(root, layers=["compile"]) as second:
        pass
    uses.release_all()
    assert first.keys["compile"] != second.keys["compile"]
    outcome = invoke("--root", str(root), "explain", str(first.keys["compile"]), str(second.keys["compile"]))
    assert "env.VLLM_SIGNING_SALT" in outcome.out and SECRET not in outcome.out
    assert _found_under(root) == []


def test_a_harmless_switch_is_shown_as_it_is(root, monkeypatch):
    monkeypatch.setenv("VLLM_DISABLE_COMPILE_CACHE", "1")
    with cachekeeper.activate(root, layers=["compile"]) as ck:
        pass
    uses.release_all()
    assert ck.keys["compile"].facts.value("env.VLLM_DISABLE_COMPILE_CACHE") == "1"
