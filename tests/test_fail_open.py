"""A cache can never make a boot fail: every failure of cachekeeper's own machinery inside
``activate()`` is a cold boot in a private directory with one warning line naming the cause, and
the process goes on. A root that cannot be written serves its hits read-only. What still raises is
the caller's: bad arguments, and whatever the code inside the block raises, unchanged.

Real file systems (a read-only bind mount and a full tmpfs, as root; tests/adversary.py), a real
PostgreSQL URL that refuses connections, and the one fake of the project for Modal's Dict.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import sys
import types
from contextlib import ExitStack
from pathlib import Path

import pytest

import cachekeeper
import cachekeeper.modal as ckm
from cachekeeper import uses
from cachekeeper.errors import UsageError
from cachekeeper.manifest import Manifest
from cachekeeper.runtime import BUILD, HIT, PRIVATE
from cachekeeper.runtime import served as served_uses
from cachekeeper.store import Root, read_sidecar

from .adversary import invoke, read_only, read_only_view, small_disk, snapshot
from .helpers import make_hf_model
from .modal_double import MemoryDict

PARTS = {"inductor/a.so": b"a" * 3000, "triton/k.cubin": b"k" * 3000}
COMPILE_VARS = ("VLLM_CACHE_ROOT", "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR", "CUDA_CACHE_PATH")
REFUSING_DB = "postgresql://deployer:s3cret-pw@127.0.0.1:1/manifest"


def boot(root: Path, **options) -> tuple[str, str, Path]:
    """A boot that builds PARTS when it must; (key, status, path)."""
    with cachekeeper.activate(root, layers=["compile"], **options) as ck:
        use = ck.layers["compile"]
        if use.status in (BUILD, PRIVATE):
            for name, content in PARTS.items():
                (use.path / name).parent.mkdir(parents=True, exist_ok=True)
                (use.path / name).write_bytes(content)
    uses.release_all()
    return str(use.key), use.status, use.path


def warnings(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]


def assert_private(use, root: Path) -> None:
    assert use.status == PRIVATE and root not in use.path.parents and use.path != root
    for variable in COMPILE_VARS:
        assert os.environ[variable].startswith(str(use.path))


# --- a read-only root ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["copy", "direct"])
def test_a_read_only_root_serves_a_hit_read_only_and_writes_nothing(tmp_path, caplog, mode):
    root = tmp_path / "root"
    _, status, built = boot(root)
    assert status == BUILD
    before = snapshot(root)
    with read_only(root):
        with cachekeeper.activate(root, layers=["compile"], read_only_hits=mode) as ck:
            use = ck.layers["compile"]
            assert use.status == HIT and ck.hit("compile")
            if mode == "direct":
                assert use.path == built  # the published artifact itself
            else:  # a private copy: compilers may write (lock files, new shapes) without failing the boot
                assert root not in use.path.parents
                (use.path / "inductor" / "new-shape.so").write_bytes(b"compiled lazily")
            for name, content in PARTS.items():
                assert (use.path / name).read_bytes() == content
            for variable in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):
                assert os.environ[variable].startswith(str(use.path))
            ck.canary("the same answer")
        uses.release_all()
        assert snapshot(root) == before  # not a journal, use, attempt or lease
    [warning] = warnings(caplog)
    assert str(root) in warning and "read-only" in warning


def test_a_read_only_root_boots_a_miss_cold_in_a_private_directory(tmp_path, caplog):
    root = tmp_path / "root"
    boot(root)
    before = snapshot(root)
    with read_only(root):
        with cachekeeper.activate(root, layers=["compile"], engine={"never": "built"}) as ck:
            assert_private(ck.layers["compile"], root)
            (ck.layers["compile"].path / "inductor").mkdir(exist_ok=True)  # compiles privately
        assert snapshot(root) == before
    assert len(warnings(caplog)) == 1


def test_a_read_only_root_serves_published_weights_in_place(tmp_path):
    root = tmp_path / "root"
    sha = make_hf_model(root / "weights", "org/model", {"config.json": b"{}", "model.safetensors": b"w" * 64})
    with cachekeeper.activate(root, model="org/model", revision="main", layers=["weights"]) as ck:
        assert ck.layers["weights"].status == "download"  # recorded by this first boot
    before = snapshot(root)
    with read_only(root):
        with cachekeeper.activate(root, model="org/model", revision="main", layers=["weights"]) as ck:
            assert ck.hits == {"weights": True} and ck.facts.value("model.revision") == sha
            assert os.environ["HF_HUB_CACHE"] == str(root / "weights")
        assert snapshot(root) == before


def test_run_on_a_read_only_root_runs_the_command_with_the_hit(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "root"
    key, _, _ = boot(root)
    with read_only(root):
        outcome = invoke("--root", str(root), "run", "--", sys.executable, "-c", "import sys; sys.exit(3)")
    assert outcome.code == 3 and f"compile hit {key}" in outcome.err  # the command's own exit code


# --- a full disk ---------------------------------------------------------------------------------


def _fill(directory: Path) -> None:
    with open(directory / "filler", "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
        except OSError as error:
            assert error.errno == errno.ENOSPC


def test_a_disk_full_before_the_boot_boots_cold_privately_with_one_warning(tmp_path, caplog):
    disk = tmp_path / "disk"
    disk.mkdir()
    with small_disk(disk, "1m"):
        root = disk / "root"
        key, status, _ = boot(root)
        assert status == BUILD
        _fill(disk)
        caplog.clear()
        with cachekeeper.activate(root, layers=["compile"], engine={"max_model_len": 64}) as ck:
            assert_private(ck.layers["compile"], root)
            assert ck.engine_args == {"max_model_len": 64}  # the server starts all the same
            (ck.layers["compile"].path / "kernel").write_bytes(b"x" * 10_000)  # the private directory works
        [warning] = warnings(caplog)
        assert "No space left on device" in warning and str(root) in warning and "private directory" in warning
        outcome = invoke("--root", str(root), "run", "--", sys.executable, "-c", "pass")
        assert outcome.code == 0, outcome
        (disk / "filler").unlink()
        assert boot(root)[:2] == (key, HIT)  # space again: the cache is used again
        uses.release_all()


# --- a manifest database, a lease backend and NVML that fail -------------------------------------


def test_a_manifest_database_that_refuses_connections_costs_only_the_builds(tmp_path, caplog):
    root = tmp_path / "root"
    key, _, _ = boot(root)
    caplog.clear()
    with cachekeeper.activate(root, layers=["compile"], db=REFUSING_DB) as ck:
        assert ck.layers["compile"].status == HIT  # a hit needs no lease: it is served
    with cachekeeper.activate(root, layers=["compile"], db=REFUSING_DB, engine={"new": 1}) as ck:
        assert_private(ck.layers["compile"], root)  # a build cannot know it is alone: never in the root
    uses.release_all()
    found = warnings(caplog)
    assert len(found) == 2 and all("manifest database is not usable" in w for w in found)
    assert "cold keys boot cold privately" in found[1] and "s3cret-pw" not in " ".join(found)
    assert [path.name for path in (root / "compile").iterdir()] == [key]


def test_a_read_only_server_registers_its_use_and_its_strikes_in_a_server_manifest(tmp_path, postgresql_url):
    """The Volume mounted read-only where it serves and writable where housekeeping runs: the
    server's use keeps prune away, and its strikes let a writable boot quarantine the artifact."""
    root, served = tmp_path / "root", tmp_path / "served"
    key, status, _ = boot(root, db=postgresql_url)
    assert status == BUILD
    with read_only_view(root, served):
        with cachekeeper.activate(served, layers=["compile"], db=postgresql_url) as ck:
            assert ck.layers["compile"].status == HIT
        pruned = invoke("--root", str(root), "--db", postgresql_url, "prune", "--older-than", "0s", "--yes", "--json")
        assert pruned.code == 0, pruned
        reasons = json.loads(pruned.out)["reasons"][key]
        assert any(reason.startswith("served read-only by") for reason in reasons), reasons
        assert (root / "compile" / key).is_dir()
        for _ in range(2):
            with pytest.raises(ServerError):
                with cachekeeper.activate(served, layers=["compile"], db=postgresql_url):
                    raise ServerError("the kernel crashed")
    manifest = Manifest.open(postgresql_url)
    assert [owner for (owner,) in manifest.rows("SELECT owner FROM served", {})]  # until this server stops
    served_uses.release_all()
    assert manifest.rows("SELECT owner FROM served", {}) == []
    assert len(manifest.rows("SELECT uid FROM strike WHERE NOT cleared", {})) == 2
    assert boot(root, db=postgresql_url)[1] == BUILD  # a writable boot counts them, quarantines, builds
    assert manifest.rows("SELECT count(*) FROM strike WHERE NOT cleared", {}) == [(0,)]
    assert [row[0] for row in manifest.rows("SELECT key FROM quarantined", {})] == [key]


class RaisingDict:
    """A ``modal.Dict`` whose server cannot be reached (the Modal seam)."""

    def get(self, key, default=None):
        raise ConnectionError("Modal server unreachable")

    def put(self, key, value, *, skip_if_exists=False):
        raise ConnectionError("Modal server unreachable")


def test_a_lease_backend_that_raises_boots_cold_keys_privately_and_serves_hits(tmp_path, caplog):
    root = tmp_path / "root"
    key, _, _ = boot(root, leases=ckm.ModalDictLeases(MemoryDict()))
    caplog.clear()
    with ckm.activate(root, layers=["compile"], leases=RaisingDict()) as ck:
        assert ck.layers["compile"].status == HIT
    with ckm.activate(root, layers=["compile", "snapshot"], leases=RaisingDict(), engine={"new": 1}) as ck:
        for use in ck.layers.values():
            assert use.status == PRIVATE and root not in use.path.parents
    uses.release_all()
    [warning] = warnings(caplog)  # one line for the one cause, whatever the number of layers
    assert "ConnectionError: Modal server unreachable" in warning and "private directory" in warning
    assert read_sidecar(Root(root), "compile", key) is not None


def test_nvml_that_fails_boots_cold_with_the_gpu_facts_unknown(tmp_path, monkeypatch, caplog):
    """NVML is there and answers, then fails to describe the GPU: fingerprint.gpu_facts' own path
    raises FingerprintError (a fake pynvml stands in for the driver this machine lacks)."""

    class NVMLError(Exception):
        pass

    def fail(*args):
        raise NVMLError("GPU is lost")

    fake = types.ModuleType("pynvml")
    fake.NVMLError = NVMLError
    fake.nvmlInit = lambda: None
    fake.nvmlShutdown = lambda: None
    fake.nvmlDeviceGetCount = fail
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.setattr("cachekeeper.fingerprint._no_nvidia_driver", lambda: False)
    root = tmp_path / "root"
    root.mkdir()
    before = snapshot(root)
    with cachekeeper.activate(root, layers=["compile"]) as ck:
        assert_private(ck.layers["compile"], root)
        assert ck.facts.value("gpu.arch") == "unknown" and ck.facts.value("torch") != "unknown"
    [warning] = warnings(caplog)
    assert "NVML" in warning and "GPU is lost" in warning and "private directory" in warning
    assert snapshot(root) == before


# --- what still raises: the caller's -------------------------------------------------------------


class ServerError(Exception):
    pass


@pytest.mark.parametrize("broken", [False, True])
def test_the_users_own_exception_propagates_unchanged(tmp_path, broken):
    root = tmp_path / "root"
    if broken:  # a root cachekeeper refuses: the boot is private, and the exception is still the user's
        root.mkdir()
        (root / ".cachekeeper").mkdir()
        (root / ".cachekeeper" / "journal").symlink_to(tmp_path)
    before = dict(os.environ)
    mine = ServerError("the model does not fit")
    with pytest.raises(ServerError) as raised:
        with cachekeeper.activate(root, layers=["compile"]) as ck:
            assert (ck.layers["compile"].status == PRIVATE) is broken
            raise mine
    assert raised.value is mine and raised.value.__traceback__ is not None
    assert dict(os.environ) == before


@pytest.mark.parametrize(
    "options, message",
    [
        ({"layers": ["kernels"]}, "unknown layer"),
        ({"on_busy": "later"}, "on_busy"),
        ({"read_only_hits": "mmap"}, "read_only_hits"),
        ({"strikes": -1}, "strikes"),
        ({"strike_window": 0}, "strike_window"),
        ({"model": "not a repo"}, "repo id"),
        ({"model": 5}, "repo id"),
        ({"engine": {"scale": float("nan")}}, "engine argument"),
        ({"engine": {"revision": "main"}}, "not an engine argument here"),
        ({"db": "mysql://host/db"}, "unsupported database URL"),
        ({"target": "missing.toml"}, "cannot be read"),
    ],
)
def test_bad_arguments_are_the_callers_and_still_raise(tmp_path, options, message):
    root = tmp_path / "root"
    with pytest.raises(UsageError, match=message):
        with cachekeeper.activate(root, **options):
            pass
    assert not root.exists()


def test_a_failure_while_finishing_is_one_warning_and_publishes_nothing(tmp_path, caplog):
    """The root goes read-only while the block runs: nothing can be published, the process goes
    on, and the next boot leaves the unfinished build alone while its builder (this process) lives."""
    root = tmp_path / "root"
    with ExitStack() as mounted:
        with cachekeeper.activate(root, layers=["compile"], lease_ttl=1) as ck:
            use = ck.layers["compile"]
            (use.path / "inductor" / "a.so").write_bytes(b"a")
            mounted.enter_context(read_only(root))
        assert read_sidecar(Root(root), "compile", str(use.key)) is None
        assert any("did not publish" in warning for warning in warnings(caplog))
    uses.release_all()
    assert boot(root)[1] == PRIVATE
