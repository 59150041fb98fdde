"""vLLM on Modal with a GPU memory snapshot whose identity comes from cachekeeper.

Modal cannot list or drop a memory snapshot; a new deploy config is the only way to get a new
one. So the snapshot layer's key, computed from the target at deploy time (no GPU needed), goes
into the image's environment: when the model revision, vLLM, torch, the engine arguments or the
GPU change, the key changes, the config changes, and Modal snapshots afresh.

    modal deploy examples/modal/snapshot_app.py

In the ``snap=True`` hook the engine boots inside ``activate()`` (caches keyed as usual), then
sleeps before the snapshot; after a restore it checks that the process still matches the facts
it was snapshotted with (loud when not) and wakes up.
"""

from __future__ import annotations

import os
from pathlib import Path

import modal

import cachekeeper.modal as ckm

HERE = Path(__file__).resolve().parent
# snapshot.toml pins the model's commit sha, so computing the tag below needs no Hub lookup.
TARGET = Path(
    os.environ.get("CACHEKEEPER_TARGET", HERE / "snapshot.toml" if modal.is_local() else "/root/snapshot.toml")
)
WEIGHTS_ROOT = os.environ.get("CACHEKEEPER_WEIGHTS_ROOT", "/vol/weights")
COMPILE_ROOT = os.environ.get("CACHEKEEPER_COMPILE_ROOT", "/vol/compile")

# Computed where the deploy runs; inside the container the image is already built.
SNAPSHOT_ENV = ckm.snapshot_env(TARGET) if modal.is_local() else {}

image = (
    modal.Image.debian_slim(python_version="3.12")
    .uv_pip_install("vllm==0.33.0", "cachekeeper[modal]")
    .env({"VLLM_SERVER_DEV_MODE": "1", "TORCHINDUCTOR_COMPILE_THREADS": "1", **SNAPSHOT_ENV})
    .add_local_file(HERE / "snapshot.toml", "/root/snapshot.toml")
)
app = modal.App("cachekeeper-vllm-snapshot", image=image)
weights_volume = modal.Volume.from_name("huggingface-cache", create_if_missing=True)
compile_volume = modal.Volume.from_name("vllm-cache", create_if_missing=True)
leases = modal.Dict.from_name("cachekeeper-leases", create_if_missing=True)


def make_engine(ck):
    """vLLM made from the arguments the caches and the snapshot tag were keyed by (enable_sleep_mode
    is in the target's engine table: vLLM hashes it, so it must key the caches too)."""
    from vllm import LLM

    return LLM(**ck.engine_args)


def sleep(engine) -> None:
    engine.sleep(level=1)  # weights off the GPU: a smaller snapshot


def wake(engine) -> None:
    engine.wake_up()


@app.cls(
    gpu="H100",
    volumes={WEIGHTS_ROOT: weights_volume, COMPILE_ROOT: compile_volume},
    enable_memory_snapshot=True,
    experimental_options={"enable_gpu_snapshot": True},
)
class SnapshotServer:
    @modal.enter(snap=True)
    def boot(self):
        # A GPU snapshot has the GPU here, so activate() may ask NVML. For a CPU-only snapshot,
        # pass snap=True (facts from the target, nothing touches the GPU) and keep to weights.
        with ckm.activate(
            COMPILE_ROOT,
            target=TARGET,
            roots={"weights": WEIGHTS_ROOT},
            volumes=[weights_volume, compile_volume],
            leases=leases,
        ) as ck:
            self.engine = make_engine(ck)
        self.hits = ck.hits
        self.snapshotted_as = ck.facts  # kept in memory: the restored process compares with it
        sleep(self.engine)

    @modal.enter(snap=False)
    def restore(self):
        ckm.verify_restore(self.snapshotted_as)
        wake(self.engine)

    @modal.method()
    def status(self) -> dict:
        """The snapshot key this container was deployed with, and the cache hits of its boot."""
        return {"snapshot_key": os.environ.get(ckm.SNAPSHOT_KEY_ENV, ""), "hits": self.hits}
