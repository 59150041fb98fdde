"""A separate virtual environment with a slim vLLM 0.33.0, so that tests can run vLLM's own hashing.

The project's own venv never gets vLLM: the real wheel pins a CUDA torch of several GB. This one is
the CPU ``torch==2.13.0`` wheel this machine keeps on disk, vLLM and its grammar engines installed
without their dependencies, and the pure-Python packages vLLM's config code imports. It is enough
for ``EngineArgs(...).create_engine_config()`` with ``VLLM_TARGET_DEVICE=cpu`` and for
``vllm.envs.compile_factors()``; it cannot run a model.

    python = ensure_vllm_python()        # raises VllmEnvUnavailable(reason)
    found = vllm_python_or_reason()      # Path, or the reason as a str: pytest.skip(found)

cachekeeper itself runs in it too (``PYTHONPATH=<repo>``; its runtime requirements are the last
step), so that tests can call ``activate()`` in the same process kind that vLLM runs in.

The venv lives at ``<repo>/.venv-vllm/`` and is made once: under a file lock (two pytest processes
may start together), with a marker written last that records the recipe, so an install that was
killed half-way, or one made by another recipe, is thrown away and made again.
``python tests/vllm_env.py`` builds it by hand and prints the python's path.

Set ``CACHEKEEPER_VLLM_ENV=0`` to never build it (the tests that need it then skip).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
VENV = REPO_ROOT / ".venv-vllm"
LOCK = REPO_ROOT / ".venv-vllm.lock"
MARKER = ".cachekeeper-recipe.json"  # inside VENV, written last
OPT_OUT = "CACHEKEEPER_VLLM_ENV"

VLLM_VERSION = "0.33.0"
# The CPU build on this machine's disk (/opt/wheels). vLLM 0.33.0 pins torch==2.14.0, a CUDA build
# of several GB; its config and hashing code run on 2.13.
TORCH = "torch==2.13.0"
# Steps of the install, in order: (pip arguments, what the step is for). Change anything here and
# bump RECIPE_VERSION: an existing venv is then rebuilt.
RECIPE_VERSION = 5
STEPS: tuple[tuple[tuple[str, ...], str], ...] = (
    ((TORCH,), "the CPU torch wheel"),
    (
        # The versions vLLM 0.33.0 pins for these three; flashinfer only so that its cache-location
        # code can be read and called (it does not run here).
        (
            "--no-deps",
            f"vllm=={VLLM_VERSION}",
            "xgrammar==0.2.8",
            "llguidance>=1.7.0,<1.8.0",
            "flashinfer-python==0.7.2.post1",
        ),
        "vLLM without its pinned CUDA torch",
    ),
    (
        (
            "packaging",
            "huggingface-hub",
            "regex",
            "pydantic",
            "numpy",
            "psutil",
            "cbor2",
            "pyzmq",
            # Exact: its version is written into the hf_config JSON that vLLM's config hash covers.
            # 5.20.2 is the newest vLLM 0.33.0 allows (>=5.16.1,<5.21.0).
            "transformers==5.20.2",
            "aiohttp",
            "requests",
            "openai-harmony",
            "openai",
            "msgspec",
            "cloudpickle",
            "pillow",
            "pybase64",
            "cachetools",
            "uvloop",
            "py-cpuinfo",
            "prometheus-client",
            "fastapi>=0.133.0,<0.137.0",
            "partial-json-parser",
            "apache-tvm-ffi==0.1.11",
            # Beyond vllm-cache.md's list: the model registry imports the model's module to
            # inspect it, and vllm/model_executor/layers/attention imports einops; flashinfer's
            # package __init__ (needed for its cache-location code) imports pynvml.
            "einops",
            "nvidia-ml-py",
            # quantization="fp8" (and other methods) import it; the version vLLM 0.33.0 pins.
            "compressed-tensors==0.17.0",
        ),
        "the pure-Python requirements vLLM's config code imports",
    ),
    (
        # So that cachekeeper (on PYTHONPATH) can activate() and publish inside this venv, as it
        # does in a real image next to vLLM: its dependencies that vLLM does not bring.
        ("--no-deps", "xxhash", "orjson", "platformdirs"),
        "cachekeeper's own runtime requirements",
    ),
)


class VllmEnvUnavailable(RuntimeError):
    """The vLLM venv cannot be had here; the message says why."""


def recipe() -> dict[str, object]:
    """Everything the venv is made from; a venv whose marker differs is rebuilt."""
    return {
        "recipe_version": RECIPE_VERSION,
        "python": sys.version.split()[0],
        "steps": [list(args) for args, _ in STEPS],
    }


def vllm_python_or_reason() -> Path | str:
    """The venv's python, building the venv first if need be; or why it cannot be had."""
    try:
        return ensure_vllm_python()
    except VllmEnvUnavailable as error:
        return str(error)


def ensure_vllm_python(*, quiet: bool = False) -> Path:
    """The python executable of ``.venv-vllm``, made first if missing, incomplete or outdated."""
    if os.environ.get(OPT_OUT, "").lower() in ("0", "no", "false", "off"):
        raise VllmEnvUnavailable(f"{OPT_OUT}=0: the vLLM venv is not to be built")
    python = VENV / "bin" / "python"
    if _complete(python):  # the common case: no lock taken
        return python
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    with open(LOCK, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _say("waiting: another process is building .venv-vllm", quiet)
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if _complete(python):  # built by the holder we waited for
                return python
            _build(python, quiet)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    if not _complete(python):
        raise VllmEnvUnavailable(f"{VENV} was built but does not check out (see the messages above)")
    return python


def _complete(python: Path) -> bool:
    try:
        marker = json.loads((VENV / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return marker.get("recipe") == recipe() and os.access(python, os.X_OK)


def _build(python: Path, quiet: bool) -> None:
    started = time.monotonic()
    if VENV.exists():
        _say(f"removing {VENV}: incomplete or made by another recipe", quiet)
        # Moved aside first, so a crash mid-removal leaves no half-deleted tree under the real name.
        trash = Path(tempfile.mkdtemp(prefix=".venv-vllm.trash-", dir=VENV.parent))
        VENV.rename(trash / "venv")
        shutil.rmtree(trash, ignore_errors=True)
    _say(f"creating {VENV} (first time only: about 90 s and 2.5 GB, most of it torch)", quiet)
    _run([sys.executable, "-m", "venv", str(VENV)], "python -m venv", quiet)
    with tempfile.TemporaryDirectory() as scratch:
        # Our own constraint on top of the machine's: no step may swap the CPU torch for a CUDA one.
        constraints = Path(scratch) / "constraints.txt"
        constraints.write_text(TORCH + "\n")
        for number, (args, what) in enumerate(STEPS, 1):
            _say(f"step {number}/{len(STEPS)}: {what}", quiet)
            command = [str(python), "-m", "pip", "install", "--progress-bar", "off", "-c", str(constraints), *args]
            _run(command, f"pip install {' '.join(args)}", quiet)
    check = subprocess.run(
        [str(python), "-c", "import torch, vllm; print(torch.__version__, vllm.__version__)"],
        capture_output=True,
        text=True,
        env=_clean_env(),
    )
    if check.returncode != 0:
        raise VllmEnvUnavailable(f"vllm does not import in {VENV}:\n{check.stderr[-3000:]}")
    torch_version, vllm_version = check.stdout.split()
    if not torch_version.endswith("+cpu") or vllm_version != VLLM_VERSION:
        raise VllmEnvUnavailable(f"{VENV} got torch {torch_version} and vllm {vllm_version}; wanted a CPU torch")
    seconds = time.monotonic() - started
    size = sum(p.stat().st_size for p in VENV.rglob("*") if p.is_file() and not p.is_symlink())
    marker = {
        "recipe": recipe(),
        "torch": torch_version,
        "vllm": vllm_version,
        "install_seconds": round(seconds, 1),
        "size_bytes": size,
    }
    partial = VENV / (MARKER + ".partial")
    partial.write_text(json.dumps(marker, indent=1) + "\n")
    partial.rename(VENV / MARKER)  # last: its presence says the venv is whole
    _say(f"made {VENV} in {seconds:.0f} s, {size / 2**30:.2f} GiB", quiet)


def _run(command: list[str], what: str, quiet: bool) -> None:
    """Run a step, passing its output through to stderr as it comes (the first install is slow)."""
    tail: list[str] = []
    try:
        with subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_clean_env()
        ) as process:
            assert process.stdout is not None
            for line in process.stdout:
                tail = ([*tail, line.rstrip()])[-15:]
                if not quiet:
                    sys.stderr.write(f"  {line}")
            returncode = process.wait()
    except OSError as error:
        raise VllmEnvUnavailable(f"{what}: {error}") from None
    if returncode != 0:
        joined = "\n".join(tail)
        raise VllmEnvUnavailable(f"{what} failed (exit {returncode}):\n{joined}")


def _clean_env() -> dict[str, str]:
    """This process's environment without another venv's activation or a test's VLLM_* setting."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VLLM_", "PYTHON", "VIRTUAL_ENV"))}
    return env


def _say(message: str, quiet: bool) -> None:
    if not quiet:
        print(f"[vllm_env] {message}", file=sys.stderr, flush=True)


PROBE = Path(__file__).resolve().parent / "vllm_probe.py"
# A HOME the probe keeps between runs: vLLM caches what it learns by importing a model's module
# (modelinfos/, keyed by the module's hash, written atomically) there, which saves ~7 s a worker.
PROBE_HOME = VENV / "probe-home"


def run_probe(requests: list[dict[str, Any]], *, isolate: bool = False, timeout: float = 600) -> list[dict[str, Any]]:
    """vllm_probe.py's answers to ``requests``, run with the vLLM venv's python (made if need be)."""
    python = ensure_vllm_python()
    command = [str(python), str(PROBE), "--home", str(PROBE_HOME)] + (["--isolate"] if isolate else [])
    done = subprocess.run(command, input=json.dumps(requests), capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"vllm_probe.py exited {done.returncode}:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout)


def install_facts() -> dict[str, object]:
    """What the marker recorded about the install (time, size, versions); empty if none."""
    try:
        return json.loads((VENV / MARKER).read_text())
    except (OSError, ValueError):
        return {}


if __name__ == "__main__":
    try:
        print(ensure_vllm_python())
    except VllmEnvUnavailable as error:
        sys.exit(f"cannot make the vLLM venv: {error}")
