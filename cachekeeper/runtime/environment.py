"""Pointing a process's cache variables at the directories of the keys it uses."""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

from ..layers import COMPILE
from .claims import Claim


def point_env(claims: Iterable[Claim], previous: dict[str, str | None]) -> dict[str, str]:
    """Set each layer's variables, remembering in ``previous`` what they were. They stay set after
    a clean exit, so that code compiled lazily later in the same process (a new batch size) lands
    in the same artifact."""
    env: dict[str, str] = {}
    for claim in claims:
        for variable, subdirectory in claim.layer.env:
            path = claim.use.path / subdirectory if subdirectory else claim.use.path
            if not path.is_dir():  # a hit's are there: a stat, not a failing mkdir and a stat
                path.mkdir(parents=True, exist_ok=True)
            env[variable] = str(path)
        if claim.layer.name == COMPILE and not has_torch_bytecode():
            # Without bytecode for torch (PYTHONDONTWRITEBYTECODE, a read-only or uv-built image),
            # every boot spends seconds compiling torch._dynamo and torch._inductor from source.
            # Keep the bytecode with the artifact, keyed by Python and torch; the image stays clean.
            env["PYTHONPYCACHEPREFIX"] = str(claim.use.path / "python")
            env["PYTHONDONTWRITEBYTECODE"] = ""
            sys.pycache_prefix, sys.dont_write_bytecode = env["PYTHONPYCACHEPREFIX"], False
    for variable, value in env.items():
        previous.setdefault(variable, os.environ.get(variable))
        os.environ[variable] = value
    return env


def restore_env(previous: Mapping[str, str | None]) -> None:
    if "PYTHONPYCACHEPREFIX" in previous:
        sys.pycache_prefix = previous["PYTHONPYCACHEPREFIX"]
        sys.dont_write_bytecode = bool(previous["PYTHONDONTWRITEBYTECODE"])
    for variable, value in previous.items():
        if value is None:
            os.environ.pop(variable, None)
        else:
            os.environ[variable] = value


def has_torch_bytecode() -> bool:
    """Whether Python finds compiled bytecode for torch's compiler, or there is no torch at all."""
    spec = importlib.util.find_spec("torch")
    if spec is None or spec.origin is None:
        return True
    source = Path(spec.origin).parent / "_dynamo" / "__init__.py"
    try:
        return Path(importlib.util.cache_from_source(str(source))).exists()
    except (NotImplementedError, ValueError):
        return True
