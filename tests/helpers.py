"""Builders for real on-disk state the tests need: Hugging Face caches, facts, CLI runs."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from cachekeeper.facts import Facts, Source

REPO_ROOT = Path(__file__).resolve().parent.parent

# A realistic H100 boot's facts; tests change one at a time.
H100_FACTS: dict[str, Any] = {
    "gpu.type": "H100",
    "gpu.name": "NVIDIA H100 80GB HBM3",
    "gpu.arch": "sm_90",
    "gpu.memory_mib": 81559,
    "gpu.count": 1,
    "driver.version": "580.159.04",
    "driver.branch": "580",
    "cuda.driver": "13.0",
    "cuda.runtime": "12.8",
    "python": "3.12.7",
    "torch": "2.9.0",
    "triton": "3.5.0",
    "vllm": "0.33.0",
    "flashinfer": "0.7.2",
    "model": "Qwen/Qwen2.5-0.5B-Instruct",
    "model.revision": "a" * 40,
    "image": "v1",
    "engine.max_model_len": 4096,
    "engine.port": 8000,
    "engine.compilation_config.cudagraph_capture_sizes": (1, 2, 4),
    "env.VLLM_USE_V1": "1",
}


def facts(**overrides: Any) -> Facts:
    """H100_FACTS with overrides; pass the name with dots replaced by double underscores."""
    values = dict(H100_FACTS)
    for name, value in overrides.items():
        values[name.replace("__", ".")] = value
    return Facts.from_values(values, Source.OBSERVED)


def make_hf_model(
    cache: Path, repo_id: str, files: dict[str, bytes], *, revision: str = "main", sha: str | None = None
) -> str:
    """Lay out a model the way huggingface_hub does: blobs by content, snapshot links, a ref."""
    sha = sha or hashlib.sha1(repo_id.encode() + json.dumps(sorted(files)).encode()).hexdigest()
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / revision).write_text(sha)
    snapshot = repo / "snapshots" / sha
    for name, content in files.items():
        blob = repo / "blobs" / hashlib.sha256(content).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(content)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return sha


def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 300):
    """Run the real ``cachekeeper`` command in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "cachekeeper", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def tree(path: Path) -> dict[str, int]:
    """Every file under ``path`` with its size: a snapshot to prove nothing was touched."""
    return {
        str(p.relative_to(path)): p.lstat().st_size for p in sorted(path.rglob("*")) if not p.is_dir() or p.is_symlink()
    }


def write_target(path: Path, body: str) -> Path:
    path.write_text(body)
    return path
