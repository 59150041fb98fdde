"""vLLM on Modal with cachekeeper: weights on one Volume, compile caches on another, keyed.

    modal run examples/modal/vllm_app.py::warm          # boot once per GPU type: builds what is cold
    modal run examples/modal/vllm_app.py::check_cache   # warm / cold / stale, inside Modal
    modal deploy examples/modal/vllm_app.py

Two classes share one boot. ``Warmer`` mounts the Volumes writable and builds what is cold (the
deploy gate runs it before a deploy). ``Server``, the one deployed, mounts them read-only: nothing
a serving container does can damage the caches, its hits are served read-only, and a key that is
cold after all (a GPU type nobody warmed) boots cold in a private directory instead of failing.
Both check a canary, the greedy completion of a fixed prompt: the build stores its digest, and a
boot that computes another answer from the same caches says so and counts a strike against them.

Containers that scale up together on a cold key share one build: the first takes the lease in a
``modal.Dict`` and builds; the others wait for it (then hit) instead of compiling the same code.
The engine is made by ``make_engine``, a small function, so that tests can put a tiny
torch.compile model in vLLM's place.
"""

from __future__ import annotations

import os
from pathlib import Path

import modal

import cachekeeper
import cachekeeper.modal as ckm

HERE = Path(__file__).resolve().parent
TARGET = Path(
    os.environ.get("CACHEKEEPER_TARGET", HERE / "cachekeeper.toml" if modal.is_local() else "/root/cachekeeper.toml")
)
WEIGHTS_ROOT = os.environ.get("CACHEKEEPER_WEIGHTS_ROOT", "/vol/weights")
COMPILE_ROOT = os.environ.get("CACHEKEEPER_COMPILE_ROOT", "/vol/compile")
MINUTES = 60

image = (
    modal.Image.debian_slim(python_version="3.12")
    .uv_pip_install("vllm==0.33.0", "cachekeeper[modal]")
    .env({"HF_XET_HIGH_PERFORMANCE": "1", "TORCHINDUCTOR_COMPILE_THREADS": "1"})
    .add_local_file(HERE / "cachekeeper.toml", "/root/cachekeeper.toml")
)
app = modal.App("cachekeeper-vllm", image=image)

# Two Volumes, so that invalidating compile caches never touches the weights.
weights_volume = modal.Volume.from_name("huggingface-cache", create_if_missing=True)
compile_volume = modal.Volume.from_name("vllm-cache", create_if_missing=True)
# The only lock containers share: Volumes have none.
leases = modal.Dict.from_name("cachekeeper-leases", create_if_missing=True)
VOLUMES = {WEIGHTS_ROOT: weights_volume, COMPILE_ROOT: compile_volume}
# What the deployed servers mount: read-only (Modal's older spelling is Volume.read_only()).
READ_ONLY = {path: volume.with_mount_options(read_only=True) for path, volume in VOLUMES.items()}


def make_engine(ck):
    """vLLM, reading weights and writing compile caches where cachekeeper pointed them, made from
    exactly the arguments the caches were keyed by: the model, its commit sha, the engine table."""
    from vllm import LLM

    return LLM(**ck.engine_args)


def complete(engine, prompt: str) -> str:
    from vllm import SamplingParams

    [output] = engine.generate([prompt], SamplingParams(max_tokens=64))
    return output.outputs[0].text


def canary_of(engine) -> dict:
    """A result sound caches compute the same way every time: the greedy completion of a fixed
    prompt, with its logprobs rounded to what one GPU type reproduces."""
    from vllm import SamplingParams

    [output] = engine.generate(["The capital of France is"], SamplingParams(max_tokens=8, temperature=0, logprobs=0))
    completion = output.outputs[0]
    logprobs = [
        round(step[token].logprob, 2) for token, step in zip(completion.token_ids, completion.logprobs, strict=True)
    ]
    return {"text": completion.text, "logprobs": logprobs}


def boot():
    """What @modal.enter runs: the engine, built inside the cache's keys. Returns (engine, hits).
    Whatever goes wrong with the cache (a Volume that fails, a full or read-only disk), the engine
    boots: cold in a private directory, with one warning."""
    with ckm.activate(
        COMPILE_ROOT,
        target=TARGET,
        roots={"weights": WEIGHTS_ROOT},
        volumes=[weights_volume, compile_volume],
        leases=leases,
    ) as ck:
        engine = make_engine(ck)
        ck.canary(canary_of(engine))  # stored with what this boot builds, compared with what it hits
    return engine, ck.hits


# gpu as in cachekeeper.toml: "H100" may run on an H200 too, and `cachekeeper check` checks both.
@app.cls(gpu="H100", volumes=READ_ONLY, timeout=20 * MINUTES, scaledown_window=5 * MINUTES)
class Server:
    """What is deployed: serves what Warmer built, from read-only mounts."""

    @modal.enter()
    def start(self):
        self.engine, self.hits = boot()

    @modal.method()
    def generate(self, prompt: str) -> str:
        return complete(self.engine, prompt)

    @modal.method()
    def cache_hits(self) -> dict[str, bool]:
        return self.hits


@app.cls(gpu="H100", volumes=VOLUMES, timeout=30 * MINUTES)
class Warmer:
    """Builds what is cold: `modal run vllm_app.py::warm`, run by the deploy gate before a deploy."""

    @modal.enter()
    def start(self):
        self.engine, self.hits = boot()

    @modal.method()
    def cache_hits(self) -> dict[str, bool]:
        return self.hits


# One at a time: the check folds the containers' journals into the SQLite manifest on the Volume,
# which must have a single writer.
@app.function(volumes=VOLUMES, timeout=5 * MINUTES, max_containers=1)
def cache_report() -> dict:
    """`cachekeeper check` where the Volumes are: the same report as the command's --json."""
    from cachekeeper.check import check

    for volume in (weights_volume, compile_volume):
        ckm.reload(volume)
    target = cachekeeper.load_target(TARGET)
    # Opening the cache folds what the containers recorded into the manifest.
    cache = cachekeeper.open_cache(Path(COMPILE_ROOT), roots={"weights": Path(WEIGHTS_ROOT)}, target=target)
    report = check(target, cache)
    compile_volume.commit()
    # One row per layer and GPU type the deploy may land on; the weights are the same on all.
    rows = {r.layer if r.landing is None else f"{r.layer} on {r.landing}": str(r.status) for r in report.layers}
    return {"ready": report.ready, "layers": rows}


@app.local_entrypoint()
def warm(gpu: str = ""):
    """Boot one container on each GPU type the deploy may land on (``--gpu H200``: on that one;
    `cachekeeper check --rebuild` passes each cold one): what is cold gets built and published."""
    spellings = [gpu] if gpu else [landing.exact for landing in cachekeeper.load_target(TARGET).landings]
    for spelling in spellings:  # "H100!": exactly an H100, where "H100" might run on an H200
        print(spelling, "cache hits:", Warmer.with_options(gpu=spelling)().cache_hits.remote())


@app.local_entrypoint()
def check_cache():
    """Exit 0 when every layer the deploy needs is warm, 1 when not: a CI gate."""
    report = cache_report.remote()
    print(report)
    raise SystemExit(0 if report["ready"] else 1)
