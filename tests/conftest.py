from __future__ import annotations

import os
from pathlib import Path

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test that needs the PostgreSQL server, through postgresql_url or postgres_server
    directly or by way of another fixture, is marked ``postgres``: ``-m "not postgres"`` never starts
    it. (The PostgreSQL case of ``db_url`` reaches the server through getfixturevalue, which no item
    declares: its param carries the mark instead.)"""
    for item in items:
        if "postgres_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.postgres)


@pytest.fixture(autouse=True)
def isolated_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """No test reads or writes the user's caches, reaches the Hub, or leaks variables it set."""
    saved = dict(os.environ)
    for name in list(os.environ):
        if name.startswith(("VLLM_", "TORCHINDUCTOR_", "TRITON_", "CACHEKEEPER_", "HF_", "PG")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("CACHEKEEPER_ROOT", str(tmp_path / "default-root-must-not-be-used"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A cache root, marked as one, as the first boot or `cachekeeper init` marks it."""
    from cachekeeper.store import Root

    path = tmp_path / "root"
    path.mkdir()
    Root(path).initialise()
    return path


@pytest.fixture(scope="session")
def vllm_measured(tmp_path_factory: pytest.TempPathFactory):
    """The session's one run of the real vLLM (tests/vllm_agreement.py): the vllm-marked modules
    read it, so that each distinct environment costs one process for them all."""
    from .vllm_agreement import measure

    return measure(tmp_path_factory)


@pytest.fixture(scope="session")
def postgres_server():
    """One throwaway PostgreSQL cluster for the whole session, started on first use."""
    from .postgres import running_server

    with running_server() as server:
        yield server


@pytest.fixture
def postgresql_url(postgres_server) -> str:
    """A fresh, empty database of its own on the test server."""
    return postgres_server.url(postgres_server.create_database())


@pytest.fixture
def sqlite_url(root: Path) -> str:
    return f"sqlite:///{root / '.cachekeeper' / 'manifest.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    """The manifest database the manifest tests run against: every such test runs on both backends
    (the PostgreSQL case marked ``postgres``)."""
    return request.getfixturevalue(f"{request.param}_url")


@pytest.fixture
def manifest(db_url: str):
    from cachekeeper.manifest import Manifest

    return Manifest.open(db_url)
