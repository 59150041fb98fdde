"""Modal's GPU types, the architecture each one means, how NVML names them, and where a request lands.

The GPU a deploy asks for is not always the GPU it gets. Modal's GPU guide
(https://modal.com/docs/guide/gpu: the list of ``gpu`` values, "Specifying GPU count", and its
section on automatic upgrades and fallbacks) says:

- ``"H100"`` may be upgraded to an H200 at no extra cost; ``"H100!"`` forbids that;
- ``"A100"`` may be upgraded to an A100-80GB at no extra cost; ``"A100-40GB"`` asks for the 40 GB
  card alone (and ``"A100-80GB"`` for the 80 GB one);
- ``"B200+"`` may run on a B200 or a B300 (billed as a B200; a B300 needs CUDA 13);
- a list (``gpu=["H100", "A100-80GB"]``) is fallbacks, tried in order of preference;
- ``":N"`` asks for N GPUs of the type on one machine.

No other upgrade is documented, so no other spelling lands on more than its own type. ``"B300"``
on its own is in Modal's newer GPU tables; ``"A10G"`` is the older name of ``"A10"``.
"""

from __future__ import annotations

from .errors import UsageError
from .values import Value


class GpuType(Value):
    """One kind of GPU a container can land on, named as Modal names it (``"A100-80GB"``)."""

    name: str
    arch: str
    # NVML's names for such devices hold every word of one of these ("NVIDIA A100-SXM4-80GB": the
    # words NVIDIA, A100, SXM4, 80GB). Words, not patterns: a boot would compile a dozen patterns.
    device_words: tuple[str, ...]


CPU = GpuType("cpu", "none", ("none",))

# Order matters: the first type whose words match an NVML name wins (A100-80GB before A100-40GB).
# Architectures are NVIDIA's compute capabilities; the B300 (Blackwell Ultra) is 10.3, sm_103.
GPU_TYPES: tuple[GpuType, ...] = (
    GpuType("T4", "sm_75", ("T4",)),
    GpuType("L4", "sm_89", ("L4",)),
    GpuType("A10", "sm_86", ("A10", "A10G")),
    GpuType("L40S", "sm_89", ("L40S",)),
    GpuType("A100-80GB", "sm_80", ("A100 80GB",)),
    GpuType("A100-40GB", "sm_80", ("A100",)),
    GpuType("RTX-PRO-6000", "sm_120", ("RTX PRO 6000",)),
    GpuType("H100", "sm_90", ("H100",)),
    GpuType("H200", "sm_90", ("H200",)),
    GpuType("B200", "sm_100", ("B200",)),
    GpuType("B300", "sm_103", ("B300",)),
    CPU,
)
_BY_NAME = {gpu.name: gpu for gpu in GPU_TYPES}

# Every spelling Modal accepts (upper case; Modal ignores case), and the types it may land on, in
# order of preference. "cpu" is cachekeeper's own: a deploy without a GPU. The first spelling
# that lands on one type alone is how a warm-up asks for exactly that type (H100 → "H100!").
_SPELLINGS: dict[str, tuple[str, ...]] = {
    "T4": ("T4",),
    "L4": ("L4",),
    "A10": ("A10",),
    "A10G": ("A10",),
    "L40S": ("L40S",),
    "A100": ("A100-40GB", "A100-80GB"),
    "A100-40GB": ("A100-40GB",),
    "A100-80GB": ("A100-80GB",),
    "RTX-PRO-6000": ("RTX-PRO-6000",),
    "H100": ("H100", "H200"),
    "H100!": ("H100",),
    "H200": ("H200",),
    "B200": ("B200",),
    "B200+": ("B200", "B300"),
    "B300": ("B300",),
    "CPU": ("cpu",),
}
_EXACT = {lands[0]: spelling for spelling, lands in reversed(_SPELLINGS.items()) if len(lands) == 1}


class Landing(Value):
    """One kind of machine a deploy's containers may boot on: a GPU type and how many of it."""

    gpu: GpuType
    gpu_count: int

    @property
    def label(self) -> str:
        """How people read it: ``H100``, ``H100:8``, ``cpu``."""
        return self.gpu.name if self.gpu_count <= 1 else f"{self.gpu.name}:{self.gpu_count}"

    @property
    def exact(self) -> str:
        """The Modal ``gpu`` value that lands here and nowhere else (``"H100!"`` for an H100)."""
        spelling = "cpu" if self.gpu is CPU else _EXACT[self.gpu.name]
        return spelling if self.gpu_count <= 1 else f"{spelling}:{self.gpu_count}"

    def __str__(self) -> str:
        return self.label


class GpuRequest(Value):
    """What a target asks Modal for, and every landing it may get, in order of preference."""

    spec: str  # as written: "H100", "B200+:2", or a fallback list '["H100", "A100-80GB"]'
    landings: tuple[Landing, ...]

    @property
    def first(self) -> Landing:
        return self.landings[0]

    @property
    def is_cpu(self) -> bool:
        return self.first.gpu is CPU

    @property
    def written(self) -> str:
        """As a target file writes it: ``"H100"``, or the list."""
        return self.spec if self.spec.startswith("[") else f'"{self.spec}"'

    def landing(self, gpu: str | None = None) -> Landing:
        """The landing on ``gpu`` (a type such as ``"H200"``, or a label such as ``"H100:8"``);
        the first when None."""
        if gpu is None:
            return self.first
        wanted = gpu.strip().upper()
        for each in self.landings:
            if wanted in (each.gpu.name.upper(), each.label.upper()):
                return each
        labels = ", ".join(each.label for each in self.landings)
        raise UsageError(f"gpu = {self.written} never lands on {gpu!r}: its landings are {labels}")


def parse_request(value: object) -> GpuRequest:
    """A target's ``gpu``: one spelling (``"H100"``, ``"B200+:2"``, ``"cpu"``) or a list of
    fallbacks (``["H100", "A100-80GB"]``). Raises UsageError saying what is wrong, in one line."""
    if isinstance(value, str):
        return GpuRequest(value.strip(), _landings(value))
    if not isinstance(value, list):
        raise UsageError(f'must be a GPU type such as "H100", or a list of them for fallbacks, not {value!r}')
    if not value:
        raise UsageError('an empty list lands nowhere: name at least one GPU type, such as ["H100"]')
    landings: list[Landing] = []
    for number, entry in enumerate(value, start=1):
        if not isinstance(entry, str):
            raise UsageError(f'entry {number} of the list must be a GPU type such as "A100-80GB", not {entry!r}')
        try:
            found = _landings(entry)
        except UsageError as error:
            raise UsageError(f"entry {number} of the list: {error}") from None
        if found[0].gpu is CPU:
            raise UsageError(f'entry {number} of the list: "cpu" cannot be a fallback; Modal falls back to GPUs only')
        landings.extend(landing for landing in found if landing not in landings)
    return GpuRequest("[" + ", ".join(f'"{entry.strip()}"' for entry in value) + "]", tuple(landings))


def parse_gpu(spec: str) -> tuple[GpuType, int]:
    """``"H100:2"`` → (the H100 type, 2): the first type one spelling lands on, and the count."""
    first = _landings(spec)[0]
    return first.gpu, first.gpu_count


def _landings(spec: str) -> tuple[Landing, ...]:
    # TYPE or TYPE:COUNT, read with string methods: a pattern costs the boot that reads it 0.15 ms.
    kind, colon, count = spec.strip().partition(":")
    well_formed = bool(kind) and not any(c.isspace() for c in kind) and (not colon or count.isdecimal())
    name = kind.upper() if well_formed else ""
    if name not in _SPELLINGS:
        raise UsageError(_unknown(spec, name))
    types = [_BY_NAME[each] for each in _SPELLINGS[name]]
    if types[0] is CPU:
        if colon:
            raise UsageError(f"GPU type {spec!r}: cpu takes no count")
        return (Landing(CPU, 0),)
    if colon and int(count) < 1:
        raise UsageError(f"GPU count in {spec!r} must be at least 1")
    return tuple(Landing(gpu, int(count) if colon else 1) for gpu in types)


def _unknown(spec: str, name: str) -> str:
    base = name[:-1]
    if name.endswith(("!", "+")) and base in _SPELLINGS:
        return (
            f"GPU type {spec!r}: Modal takes '!' only after H100 (H100! never lands on an H200) and '+' only "
            f"after B200 (B200+ may land on a B300); write {base}"
        )
    known = ", ".join(spelling if spelling != "CPU" else "cpu" for spelling in _SPELLINGS)
    return f"unknown GPU type {spec!r}: use one of {known} (optionally with :COUNT), or a list of them"


def modal_gpu_type(device_name: str) -> str | None:
    """The Modal type of a device NVML calls ``device_name``, or None when we don't know it."""
    words = set(device_name.replace("-", " ").split())
    for gpu in GPU_TYPES:
        if any(words.issuperset(each.split()) for each in gpu.device_words):
            return gpu.name
    return None
