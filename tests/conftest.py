from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def isolated_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """No test reads or writes the user's caches, reaches the Hub, or leaks variables it set."""
    saved = dict(os.environ)
    for name in list(os.environ):
        if name.startswith(("VLLM_", "TORCHINDUCTOR_", "TRITON_", "CACHEKEEPER_", "HF_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("CACHEKEEPER_ROOT", str(tmp_path / "default-root-must-not-be-used"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "root"
    path.mkdir()
    return path


@pytest.fixture
def db_url(root: Path) -> str:
    """The manifest database the manifest tests run against."""
    return f"sqlite:///{root / '.cachekeeper' / 'manifest.db'}"


@pytest.fixture
def manifest(db_url: str):
    from cachekeeper.manifest import Manifest

    return Manifest.open(db_url)
