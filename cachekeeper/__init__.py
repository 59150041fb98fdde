"""cachekeeper: cache keys, a manifest and housekeeping for LLM-server caches on serverless GPUs.

The boot-time API (``activate``, ``observe``, keys) imports only the standard library and NVML;
the manifest-backed operations load SQLAlchemy on first use.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from .errors import CachekeeperError
from .facts import Fact, Facts, Source, observe
from .keys import CacheKey, FactChange, derive_key, derive_keys, explain
from .layers import DEFAULT_LAYERS, Layer
from .runtime import Activation, activate
from .store import Artifact, Root, Roots
from .target import Target, find_target, load_target

__version__ = "0.1.0"

# Heavier parts, imported when first touched: name → module.
_LAZY = {
    "check": "check",
    "CheckReport": "check",
    "Manifest": "manifest",
    "plan_prune": "prune",
    "execute_prune": "prune",
    "sync": "sync",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'cachekeeper' has no attribute {name!r}")


__all__ = [
    "Activation", "Artifact", "CacheKey", "CachekeeperError", "CheckReport", "DEFAULT_LAYERS", "Fact",
    "FactChange", "Facts", "Layer", "Manifest", "Root", "Roots", "Source", "Target", "activate", "check",
    "derive_key", "derive_keys", "execute_prune", "explain", "find_target", "load_target", "observe",
    "plan_prune", "sync",
]  # fmt: skip
