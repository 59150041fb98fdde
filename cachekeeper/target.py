"""Targets: what a deploy will run, read from ``cachekeeper.toml`` or ``[tool.cachekeeper]``.

::

    [target]
    gpu = "H100"                       # a Modal GPU type, optionally ":COUNT"; a list of fallbacks; or "cpu"
    model = "Qwen/Qwen2.5-0.5B-Instruct"
    revision = "main"                  # resolved to a commit sha
    layers = ["weights", "compile"]    # what the deploy needs warm
    warmup = ["modal", "run", "app.py::warm", "--gpu", "{gpu}"]  # check --rebuild: once per cold landing
    strikes = 2                        # failed boots on an artifact that quarantine it (0: never)

    [target.packages]
    vllm = "0.33.0"

    [target.engine]
    max_model_len = 8192

A target declares what the deployer knows. What it leaves out (the driver, usually) is inherited
from the newest fingerprint observed on the same GPU type; see check.py.

``gpu`` means what it means to Modal: the *landings* of a request are every GPU type (and count)
its containers may boot on, since ``"H100"`` may run on an H200, ``"B200+"`` on a B300, and a list
falls back from one type to the next (see gpus.py). Each landing has facts and keys of its own.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from . import facts as f
from .engine_args import refuse_reserved
from .errors import TargetError, UsageError
from .facts import Fact, Source
from .gpus import CPU, GpuRequest, GpuType, Landing, parse_request
from .layers import COMPILE, DEFAULT_LAYERS, WEIGHTS, Layer, custom_layer
from .values import Value

TARGET_FILE = "cachekeeper.toml"
# In a warmup command: the Modal GPU value that lands on exactly one landing ("H100!", "H200").
GPU_PLACEHOLDER = "{gpu}"

_TARGET_KEYS = {
    "gpu",
    "model",
    "revision",
    "python",
    "cuda",
    "driver",
    "image",
    "layers",
    "packages",
    "engine",
    "env",
    "warmup",
    "strikes",
}
_TOP_KEYS = {"target", "roots", "layers", "budget"}
# Modal advises at most 50,000 files on a (v1) Volume and refuses more than 500,000: what doctor
# holds a root to when the target names no budget of its own.
DEFAULT_FILE_BUDGET = 50_000


class Target(Value):
    source: str  # where it was read from, for messages
    request: GpuRequest  # the GPU asked for, and every landing it may get
    model: str | None
    revision: str | None
    python: str | None
    cuda: str | None
    driver: str | None
    image: str | None
    packages: Mapping[str, str]
    engine: Mapping[str, Any]
    env: Mapping[str, str]
    layers: tuple[Layer, ...]
    needs: tuple[str, ...]
    roots: Mapping[str, Path]
    warmup: tuple[str, ...]  # the command that boots once inside activate(); see check --rebuild
    strikes: int | None  # failed boots that quarantine an artifact (strikes.py); None: the default
    max_files: int  # [budget] files: how many files a root may hold (doctor warns)

    @property
    def landings(self) -> tuple[Landing, ...]:
        """Every GPU type (and count) the deploy's containers may boot on, preferred first."""
        return self.request.landings

    @property
    def gpu(self) -> GpuType:
        """The first landing's GPU type."""
        return self.request.first.gpu

    @property
    def gpu_count(self) -> int:
        return self.request.first.gpu_count

    def landing(self, gpu: str | None = None) -> Landing:
        """The landing on ``gpu`` (``"H200"``), the first when None; UsageError when it has none."""
        return self.request.landing(gpu)

    def warmup_commands(self, landings: Sequence[Landing]) -> list[tuple[Landing | None, tuple[str, ...]]]:
        """The warm-up to run so that ``landings`` get warm: once per landing when an argument holds
        ``{gpu}`` (filled with the Modal ``gpu`` value that lands on exactly that GPU type, such
        as ``H100!`` or ``H200:2``), else once, as written."""
        if not any(GPU_PLACEHOLDER in argument for argument in self.warmup):
            return [(None, self.warmup)]
        return [
            (landing, tuple(argument.replace(GPU_PLACEHOLDER, landing.exact) for argument in self.warmup))
            for landing in landings
        ]

    def declared_facts(self, landing: Landing | None = None) -> list[Fact]:
        """Every fact the target states on ``landing`` (default: the first), except the model
        revision (which must be resolved)."""
        declared = Source.DECLARED
        landing = landing or self.request.first
        gpu = landing.gpu
        facts = [Fact(f.GPU_TYPE, gpu.name, declared)]
        facts.append(Fact(f.GPU_COUNT, landing.gpu_count, declared))
        facts.append(Fact(f.GPU_ARCH, gpu.arch, declared))
        if gpu is CPU:
            # A machine without a GPU has none of these; nothing needs to be inherited.
            for name in (f.GPU_NAME, f.DRIVER, f.DRIVER_BRANCH, f.CUDA_DRIVER):
                facts.append(Fact(name, f.NONE, declared))
            facts.append(Fact(f.GPU_MEMORY, 0, declared))
        if self.driver:
            facts.append(Fact(f.DRIVER, self.driver, declared))
            facts.append(Fact(f.DRIVER_BRANCH, self.driver.split(".")[0], declared))
        if self.python:
            facts.append(Fact(f.PYTHON, self.python, declared))
        if self.cuda:
            facts.append(Fact(f.CUDA_RUNTIME, self.cuda, declared))
        if self.image:
            facts.append(Fact(f.IMAGE, self.image, declared))
        facts.extend(Fact(name, version, declared) for name, version in self.packages.items())
        facts.extend(f.engine_facts(self.engine))
        facts.extend(f.env_facts(self.env, Source.DECLARED))
        if self.model is None:
            facts.append(Fact(f.MODEL, f.NONE, declared))
            facts.append(Fact(f.MODEL_REVISION, f.NONE, declared))
        else:
            facts.append(Fact(f.MODEL, self.model, declared))
        return facts


def find_target(path: Path | None, cwd: Path | None = None) -> Target | None:
    """The target at ``path``, else ./cachekeeper.toml, else ./pyproject.toml's [tool.cachekeeper]."""
    if path is not None:
        if not path.is_file():
            raise UsageError(f"target file {path} does not exist")
        return load_target(path)
    cwd = Path.cwd() if cwd is None else cwd
    if (cwd / TARGET_FILE).is_file():
        return load_target(cwd / TARGET_FILE)
    pyproject = cwd / "pyproject.toml"
    if pyproject.is_file() and "cachekeeper" in _read_toml(pyproject).get("tool", {}):
        return load_target(pyproject)
    return None


def load_target(path: Path) -> Target:
    document = _read_toml(path)
    if path.name == "pyproject.toml":
        document = document.get("tool", {}).get("cachekeeper")
        if not isinstance(document, dict):
            raise TargetError(path, "no [tool.cachekeeper] table")
        return parse_target(document, path, prefix="tool.cachekeeper.")
    return parse_target(document, path)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise TargetError(path, f"not valid TOML: {error}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise TargetError(path, f"cannot be read: {error}") from None


def parse_target(document: Mapping[str, Any], path: Path, prefix: str = "") -> Target:
    """A Target from a parsed document; every problem names the table and setting at fault."""
    _reject_unknown(document, _TOP_KEYS, path, prefix.rstrip(".") or "the top level")
    table = document.get("target")
    if not isinstance(table, dict):
        raise TargetError(path, f'no [{prefix}target] table: add one with at least gpu = "H100" (or "cpu")')
    where = f"[{prefix}target]"
    _reject_unknown(table, _TARGET_KEYS, path, where)
    text = _StringReader(table, path, where)
    if table.get("gpu") is None:
        raise TargetError(path, f'{where} needs gpu = "H100" (a Modal GPU type, a list of them, or "cpu")')
    try:
        request = parse_request(table["gpu"])
    except UsageError as error:
        raise TargetError(path, f"{where} gpu: {error}") from None
    try:
        engine_table = _table(table, "engine", path, where)
        f.engine_facts(engine_table)  # validates the values
    except UsageError as error:
        raise TargetError(path, f"{where} {error}") from None
    try:
        refuse_reserved(engine_table, f"[{prefix}target.engine]")
    except UsageError as error:
        raise TargetError(path, str(error)) from None
    if request.is_cpu and table.get("driver") is not None:
        raise TargetError(path, f'{where} driver: a machine without a GPU (gpu = "cpu") has no NVIDIA driver')
    packages = _string_table(table, "packages", path, where)
    unknown_packages = set(packages) - set(f.PACKAGES)
    if unknown_packages:
        raise TargetError(
            path,
            f"[{prefix}target.packages] does not key {', '.join(sorted(unknown_packages))}: "
            f"use {', '.join(f.PACKAGES)}",
        )
    layers = DEFAULT_LAYERS + tuple(
        custom_layer(name, body if isinstance(body, dict) else {}, str(path))
        for name, body in _table(document, "layers", path, "the top level").items()
    )
    model = text("model")
    if model is not None and not f.is_repo_id(model):
        raise TargetError(path, f"{where} model {model!r} is not a Hugging Face repo id such as org/name")
    needs = _needs(table, layers, model, path, where)
    roots = {
        name: _root(value, path, f"[{prefix}roots] {name}")
        for name, value in _string_table(document, "roots", path, "the top level").items()
    }
    unknown_roots = set(roots) - {layer.name for layer in layers}
    if unknown_roots:
        raise TargetError(path, f"[{prefix}roots] names unknown layer(s) {', '.join(sorted(unknown_roots))}")
    return Target(
        source=str(path),
        request=request,
        model=model,
        revision=text("revision"),
        python=text("python"),
        cuda=text("cuda"),
        driver=text("driver"),
        image=text("image"),
        packages=packages,
        engine=engine_table,
        env={name: str(value) for name, value in _env_table(table, path, where).items()},
        layers=layers,
        needs=needs,
        roots=roots,
        warmup=_warmup(table.get("warmup"), path, where),
        strikes=_strikes(table.get("strikes"), path, where),
        max_files=_budget(document, path, f"[{prefix}budget]"),
    )


def _budget(document: Mapping[str, Any], path: Path, where: str) -> int:
    table = _table(document, "budget", path, "the top level")
    _reject_unknown(table, {"files"}, path, where)
    files = table.get("files", DEFAULT_FILE_BUDGET)
    if isinstance(files, bool) or not isinstance(files, int) or files < 1:
        raise TargetError(path, f"{where} files must be a whole number of files, such as 50000, not {files!r}")
    return files


def _root(value: str, path: Path, where: str) -> Path:
    """A layer's root, relative to the target file; it may be absent here (a Volume mounted only
    in the containers), but never a file."""
    if "\0" in value:
        raise TargetError(path, f"{where} cannot hold a NUL character")
    root = path.parent / Path(value).expanduser()
    if root.exists() and not root.is_dir():
        raise TargetError(path, f"{where} = {value!r} is not a directory")
    return root


class _StringReader:
    def __init__(self, table: Mapping[str, Any], path: Path, where: str) -> None:
        self.table, self.path, self.where = table, path, where

    def __call__(self, name: str) -> str | None:
        value = self.table.get(name)
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            raise TargetError(self.path, f"{self.where} {name} must be a non-empty string, not {value!r}")
        return value.strip()


def _reject_unknown(table: Mapping[str, Any], known: set[str], path: Path, where: str) -> None:
    unknown = set(table) - known
    if unknown:
        raise TargetError(
            path, f"unknown setting(s) {', '.join(sorted(unknown))} in {where}: use {', '.join(sorted(known))}"
        )


def _table(parent: Mapping[str, Any], name: str, path: Path, where: str) -> dict[str, Any]:
    value = parent.get(name, {})
    if not isinstance(value, dict):
        raise TargetError(path, f"{name} in {where} must be a table, not {value!r}")
    return value


def _string_table(parent: Mapping[str, Any], name: str, path: Path, where: str) -> dict[str, str]:
    table = _table(parent, name, path, where)
    for key, value in table.items():
        if not isinstance(value, str) or not value.strip():
            raise TargetError(path, f"{name}.{key} in {where} must be a non-empty string, not {value!r}")
    return table


def _env_table(parent: Mapping[str, Any], path: Path, where: str) -> dict[str, str | int]:
    table = _table(parent, "env", path, where)
    for key, value in table.items():
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise TargetError(path, f"env.{key} in {where} must be a string, not {value!r}")
    return table


def _warmup(value: Any, path: Path, where: str) -> tuple[str, ...]:
    """A command as a list of arguments, or one string split the way a shell would."""
    if value is None:
        return ()
    if isinstance(value, str):
        import shlex  # only a target with a warmup command needs it

        try:
            value = shlex.split(value)
        except ValueError as error:
            raise TargetError(path, f"{where} warmup cannot be split into arguments: {error}") from None
    if not isinstance(value, list) or not value or not all(isinstance(a, str) and a for a in value):
        raise TargetError(
            path, f'{where} warmup must be a command: a list of strings such as ["modal", "run", "app.py::warm"]'
        )
    return tuple(value)


def _strikes(value: Any, path: Path, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 1000:
        raise TargetError(path, f"{where} strikes must be a whole number from 0 (never quarantine) up, not {value!r}")
    return value


def _needs(
    table: Mapping[str, Any], layers: tuple[Layer, ...], model: str | None, path: Path, where: str
) -> tuple[str, ...]:
    if "layers" not in table:
        return (WEIGHTS, COMPILE) if model else (COMPILE,)
    needs = table["layers"]
    if not isinstance(needs, list) or not needs or not all(isinstance(n, str) for n in needs):
        raise TargetError(path, f"{where} layers must be a non-empty list of layer names")
    known = {layer.name for layer in layers}
    unknown = [name for name in needs if name not in known]
    if unknown:
        raise TargetError(
            path, f"{where} layers names unknown layer(s) {', '.join(unknown)}: use {', '.join(sorted(known))}"
        )
    if WEIGHTS in needs and model is None:
        raise TargetError(path, f"{where} needs a model for the weights layer")
    return tuple(needs)
