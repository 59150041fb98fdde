"""The fingerprint: the facts of this process's environment, read from the machine it runs on.

Collecting them must cost almost nothing at boot, so this module imports neither torch nor vllm:
the GPU comes from NVML, versions from ``importlib.metadata``, the torch build's CUDA runtime
from the text of ``torch/version.py``, and the model revision from the Hugging Face cache on disk.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .errors import FingerprintError, RevisionError, UsageError
from .facts import (
    CUDA_DRIVER,
    CUDA_RUNTIME,
    DRIVER,
    DRIVER_BRANCH,
    GPU_ARCH,
    GPU_COUNT,
    GPU_MEMORY,
    GPU_NAME,
    GPU_TYPE,
    IMAGE,
    MODEL,
    MODEL_REVISION,
    NONE,
    PACKAGES,
    PYTHON,
    UNKNOWN,
    Fact,
    Facts,
    Source,
    engine_facts,
    env_facts,
    hf_repo_folder,
    is_commit_sha,
    is_repo_id,
)
from .gpus import modal_gpu_type


def observe(
    *,
    model: str | None = None,
    revision: str | None = None,
    engine: Mapping[str, Any] | None = None,
    hf_cache: Path | None = None,
    image: str | None = None,
    environ: Mapping[str, str] | None = None,
    gpu: Iterable[Fact] | None = None,
) -> Facts:
    """The fingerprint of this process's environment, plus the model and engine it will run.

    ``gpu`` replaces what NVML would say: where probing is not allowed (a ``snap=True`` hook of
    a CPU-only memory snapshot), the GPU facts a target declares.
    """
    environ = os.environ if environ is None else environ
    facts = [
        *(gpu_facts(environ) if gpu is None else gpu),
        *package_facts(),
        Fact(PYTHON, sys.version.split()[0], Source.OBSERVED),
        Fact(IMAGE, image or NONE, Source.DECLARED if image else Source.OBSERVED),
        *env_facts(environ),
        *engine_facts(engine or {}),
        *model_facts(model, revision, hf_cache=hf_cache, environ=environ),
    ]
    return Facts(tuple(facts))


def gpu_facts(environ: Mapping[str, str]) -> list[Fact]:
    """GPU and driver facts through NVML; a machine without NVML or GPUs says so in the values."""
    if _no_nvidia_driver():
        return _no_gpu()  # and pynvml's import, a third of cachekeeper's boot cost, is skipped
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # no library, no driver, no permission: all mean "no GPU here"
        return _no_gpu()
    try:
        handles = _visible_handles(pynvml, environ.get("CUDA_VISIBLE_DEVICES"))
        driver = _text(pynvml.nvmlSystemGetDriverVersion())
        cuda_int = pynvml.nvmlSystemGetCudaDriverVersion()
        cuda = f"{cuda_int // 1000}.{cuda_int % 1000 // 10}"
        if not handles:
            return _gpu_fact_list(name=NONE, arch=NONE, memory_mib=0, count=0, driver=driver, cuda=cuda)
        first = handles[0]
        major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(first)
        return _gpu_fact_list(
            name=_text(pynvml.nvmlDeviceGetName(first)),
            arch=f"sm_{major}{minor}",
            memory_mib=int(pynvml.nvmlDeviceGetMemoryInfo(first).total) // 2**20,
            count=len(handles),
            driver=driver,
            cuda=cuda,
        )
    except pynvml.NVMLError as error:
        raise FingerprintError(f"NVML answered but could not describe the GPU: {error}") from error
    finally:
        pynvml.nvmlShutdown()


def _no_gpu() -> list[Fact]:
    return _gpu_fact_list(name=NONE, arch=NONE, memory_mib=0, count=0, driver=NONE, cuda=NONE)


def _no_nvidia_driver() -> bool:
    """On Linux NVML reaches the kernel driver through /dev/nvidiactl (/dev/dxg under WSL); with
    neither, there is no NVIDIA driver to ask."""
    return sys.platform == "linux" and not any(os.path.exists(p) for p in ("/dev/nvidiactl", "/dev/dxg"))


def _gpu_fact_list(*, name: str, arch: str, memory_mib: int, count: int, driver: str, cuda: str) -> list[Fact]:
    observed = Source.OBSERVED
    return [
        Fact(GPU_TYPE, modal_gpu_type(name) or name, observed),
        Fact(GPU_NAME, name, observed),
        Fact(GPU_ARCH, arch, observed),
        Fact(GPU_MEMORY, memory_mib, observed),
        Fact(GPU_COUNT, count, observed),
        Fact(DRIVER, driver, observed),
        Fact(DRIVER_BRANCH, driver.split(".")[0], observed),
        Fact(CUDA_DRIVER, cuda, observed),
    ]


def _visible_handles(pynvml: Any, visible: str | None) -> list[Any]:
    """The devices CUDA would show this process, in CUDA_VISIBLE_DEVICES order."""
    count = pynvml.nvmlDeviceGetCount()
    if visible is None:
        return [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
    handles = []
    for token in (part.strip() for part in visible.split(",")):
        # CUDA stops at the first entry it cannot parse; so do we.
        if token.isdigit() and int(token) < count:
            handles.append(pynvml.nvmlDeviceGetHandleByIndex(int(token)))
        elif token.startswith("GPU-"):
            handles.append(pynvml.nvmlDeviceGetHandleByUUID(token))
        else:
            break
    return handles


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def package_facts() -> list[Fact]:
    found = _dist_info_versions()
    facts = []
    for name, dists in PACKAGES.items():
        version = next((found[_normalize(d)] for d in dists if _normalize(d) in found), None)
        facts.append(Fact(name, version or _metadata_version(name, dists), Source.OBSERVED))
    facts.append(Fact(CUDA_RUNTIME, torch_cuda_runtime(), Source.OBSERVED))
    return facts


_STANDARD_LIBRARY = (os.path.dirname(os.__file__), os.path.join(os.path.dirname(os.__file__), "lib-dynload"))


def _dist_info_versions() -> dict[str, str]:
    """Installed versions read from ``NAME-VERSION.dist-info`` directory names on sys.path.

    The wheel spec puts the version in the name, so one listing per path entry replaces
    importlib.metadata, whose import alone costs more than the rest of a boot's fingerprint.
    The first entry on sys.path wins, as it does for imports. The standard library's own
    directories are skipped: they hold no distributions, and more than half of what a boot would
    list.
    """
    versions: dict[str, str] = {}
    for entry in sys.path:
        if entry in _STANDARD_LIBRARY:
            continue
        try:
            names = os.listdir(entry or ".")
        except OSError:
            continue
        for name in names:
            if name.endswith(".dist-info"):
                dist, _, version = name[: -len(".dist-info")].rpartition("-")
                versions.setdefault(_normalize(dist), version)
    return versions


def _metadata_version(module: str, dists: tuple[str, ...]) -> str:
    """The slow path, for a package importable without a dist-info directory (an egg install)."""
    if importlib.util.find_spec(module) is None:
        return NONE
    from importlib import metadata

    for dist in dists:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return UNKNOWN


def _normalize(dist: str) -> str:
    """The name as PEP 503 compares them: runs of -, _ and . as one _, in lower case (string
    methods, not a pattern: this runs for every dist-info directory at every boot)."""
    name = dist.lower().replace("-", "_").replace(".", "_")
    while "__" in name:
        name = name.replace("__", "_")
    return name


def torch_cuda_runtime() -> str:
    """The CUDA runtime torch was built with (``12.8``), ``rocm6.2``, ``cpu``, or ``none``.

    Read from the text of torch/version.py: importing torch would cost seconds at boot.
    """
    spec = importlib.util.find_spec("torch")
    if spec is None or spec.origin is None:
        return NONE
    try:
        text = (Path(spec.origin).parent / "version.py").read_text()
    except OSError:
        return UNKNOWN
    return cuda_runtime_in(text)


def cuda_runtime_in(version_py: str) -> str:
    """The runtime named by the text of a torch/version.py: ``cuda: Optional[str] = '12.8'`` or
    ``hip = None`` at the start of a line (read line by line: a pattern would cost a boot 0.25 ms
    to compile)."""
    found: dict[str, str] = {}
    for line in version_py.splitlines():
        target, assigned, value = line.partition("=")
        name, value = target.partition(":")[0].rstrip(), value.strip()
        if assigned and name in ("cuda", "hip") and len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            found[name] = value[1:-1]
    if found.get("cuda"):
        return found["cuda"]
    if found.get("hip"):
        return f"rocm{found['hip']}"
    return "cpu"


def model_facts(
    model: str | None,
    revision: str | None,
    *,
    hf_cache: Path | None,
    environ: Mapping[str, str],
    source: Source = Source.DECLARED,
) -> list[Fact]:
    if not model:
        return [Fact(MODEL, NONE, source), Fact(MODEL_REVISION, NONE, source)]
    if not is_repo_id(model):
        raise UsageError(f"model {model!r} is not a Hugging Face repo id such as org/name")
    return [Fact(MODEL, model, source), resolve_revision(model, revision or "main", hf_cache, environ)]


def resolve_revision(model: str, revision: str, hf_cache: Path | None, environ: Mapping[str, str]) -> Fact:
    """The commit sha behind ``revision``: as declared, from the HF cache on disk, or from the Hub.

    vLLM keys its compile cache by the revision *name* ("main"), so a moved branch would reuse a
    cache built for other weights; we always key by the sha.
    """
    if is_commit_sha(revision):
        return Fact(MODEL_REVISION, revision, Source.DECLARED)
    if hf_cache is not None:
        repo = hf_cache / hf_repo_folder(model)
        try:
            sha = (repo / "refs" / revision).read_text().strip()
        except OSError:
            sha = ""
        if is_commit_sha(sha) and (repo / "snapshots" / sha).is_dir():
            return Fact(MODEL_REVISION, sha, Source.RESOLVED)
    if environ.get("HF_HUB_OFFLINE", "").lower() not in ("", "0", "false", "no"):
        where = f"in {hf_cache}" if hf_cache else "without an HF cache"
        raise RevisionError(
            f"cannot resolve revision {revision!r} of {model} offline {where}: "
            "pin a 40-character commit sha, or download the model first"
        )
    return Fact(MODEL_REVISION, _resolve_on_hub(model, revision), Source.RESOLVED)


def _resolve_on_hub(model: str, revision: str) -> str:
    try:
        from huggingface_hub import HfApi

        sha = HfApi().model_info(model, revision=revision).sha
    except Exception as error:
        raise RevisionError(
            f"cannot resolve revision {revision!r} of {model} on the Hugging Face Hub ({error}): "
            "pin a 40-character commit sha, or set HF_HUB_OFFLINE=1 with the model in the HF cache"
        ) from None
    if not sha:
        raise RevisionError(f"the Hub gave no commit sha for {model}@{revision}")
    return sha
