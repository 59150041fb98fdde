"""Engine arguments: one declaration that both keys the caches and starts the server.

``activate()`` keys the compile and snapshot layers by the model, its resolved commit sha and the
target's engine table, and hands the very same values back as ``ck.engine_args``, so that
``LLM(**ck.engine_args)`` cannot drift from the key::

    {"model": "Qwen/Qwen2.5-0.5B-Instruct", "revision": "7ae5576...", "max_model_len": 4096}

``model`` and ``revision`` come from the target's ``model`` and ``revision`` (the latter resolved
to a sha), never from its engine table: two places for one value is how a key drifts.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from .errors import UsageError

MODEL = "model"
REVISION = "revision"
RESERVED = (MODEL, REVISION)


def refuse_reserved(engine: Mapping[str, Any], where: str) -> None:
    """Refuse ``model`` and ``revision`` in an engine table: they have settings of their own."""
    for name in RESERVED:
        if name in engine:
            raise UsageError(
                f"{where}: {name} is not an engine argument here: give it as the {name} of the target "
                f"(or activate(..., {name}=...)), so that the key and the server read it from one place"
            )


def engine_args(model: str | None, revision: str | None, engine: Mapping[str, Any]) -> Mapping[str, Any]:
    """What the key was derived from, as ``LLM(**...)`` takes it: read-only, and a copy."""
    arguments: dict[str, Any] = {}
    if model is not None:
        arguments[MODEL] = model
        if revision is not None:
            arguments[REVISION] = revision
    arguments.update(copy.deepcopy(dict(engine)))
    return MappingProxyType(arguments)
