"""Modal's GPU types, the architecture each one means, and how NVML names them."""

from __future__ import annotations

import re
from typing import NamedTuple

from .errors import UsageError


class GpuType(NamedTuple):
    """A GPU type as Modal spells it (``gpu="A100-80GB"``) and what a deployer knows of it."""

    name: str
    arch: str | None  # None where the type covers several architectures (B200+ may be a B300)
    device_pattern: str  # matches the names NVML gives such devices


CPU = GpuType("cpu", "none", r"^none$")

# Order matters: the first pattern that matches an NVML name wins (A100-80GB before A100-40GB).
# Types from https://modal.com/docs/guide/gpu ; architectures from NVIDIA's compute capability list.
GPU_TYPES: tuple[GpuType, ...] = (
    GpuType("T4", "sm_75", r"\bT4\b"),
    GpuType("L4", "sm_89", r"\bL4\b"),
    GpuType("A10", "sm_86", r"\bA10G?\b"),
    GpuType("L40S", "sm_89", r"\bL40S\b"),
    GpuType("A100-80GB", "sm_80", r"\bA100\b.*\b80GB\b"),
    GpuType("A100-40GB", "sm_80", r"\bA100\b"),
    GpuType("RTX-PRO-6000", "sm_120", r"\bRTX PRO 6000\b"),
    GpuType("H100", "sm_90", r"\bH100\b"),
    GpuType("H200", "sm_90", r"\bH200\b"),
    GpuType("B200", "sm_100", r"\bB200\b"),
    GpuType("B200+", None, r"\bB300\b"),
    CPU,
)

# Other spellings Modal accepts for the same hardware.
_ALIASES = {"A100": "A100-40GB", "A10G": "A10", "H100!": "H100"}
_BY_NAME = {gpu.name.upper(): gpu for gpu in GPU_TYPES}
_SPEC = re.compile(r"(?P<type>[^:\s]+)(?::(?P<count>\d+))?")


def parse_gpu(spec: str) -> tuple[GpuType, int]:
    """``"H100:2"`` → (the H100 type, 2). Case does not matter, as in Modal."""
    match = _SPEC.fullmatch(spec.strip())
    name = match.group("type").upper() if match else ""
    gpu = _BY_NAME.get(_ALIASES.get(name, name))
    if gpu is None:
        known = ", ".join(g.name for g in GPU_TYPES)
        raise UsageError(f"unknown GPU type {spec!r}: use one of {known} (optionally with :COUNT)")
    assert match is not None
    count = match.group("count")
    if gpu is CPU:
        if count:
            raise UsageError(f"GPU type {spec!r}: cpu takes no count")
        return gpu, 0
    if count is not None and int(count) < 1:
        raise UsageError(f"GPU count in {spec!r} must be at least 1")
    return gpu, int(count or 1)


def modal_gpu_type(device_name: str) -> str | None:
    """The Modal type of a device NVML calls ``device_name``, or None when we don't know it."""
    for gpu in GPU_TYPES:
        if re.search(gpu.device_pattern, device_name):
            return gpu.name
    return None
