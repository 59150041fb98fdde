"""cachekeeper: cache keys, a manifest and housekeeping for LLM-server caches on serverless GPUs.

Every name below is imported on first use, so that a boot pays only for what it calls: the
boot-time API (``activate``, ``observe``, keys) needs the standard library and NVML alone.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Public name → the module that defines it. ``check`` and ``sync`` are functions of the modules
# of the same name (``cachekeeper.check.check``): a name cannot be both.
_EXPORTS = {
    "CachekeeperError": "errors",
    "Fact": "facts",
    "Facts": "facts",
    "Source": "facts",
    "observe": "fingerprint",
    "CacheKey": "keys",
    "FactChange": "keys",
    "derive_key": "keys",
    "derive_keys": "keys",
    "explain": "keys",
    "DEFAULT_LAYERS": "layers",
    "Layer": "layers",
    "Activation": "runtime",
    "activate": "runtime",
    "Artifact": "store",
    "Root": "store",
    "Roots": "store",
    "Target": "target",
    "find_target": "target",
    "load_target": "target",
    "Cache": "cache",
    "open_cache": "cache",
    "CheckReport": "check",
    "Manifest": "manifest",
    "PrunePolicy": "prune",
    "plan_prune": "prune",
    "execute_prune": "prune",
    "Scope": "scope",
}

__all__ = sorted(_EXPORTS)


def lazy_exports(package: str, exports: Mapping[str, str]) -> Callable[[str], Any]:
    """A package's ``__getattr__`` that imports each public name from its module (``exports``:
    name → submodule) the first time it is asked for; also used by ``cachekeeper.store``."""

    def __getattr__(name: str) -> Any:
        if name in exports:
            return getattr(import_module(f".{exports[name]}", package), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__


__getattr__ = lazy_exports(__name__, _EXPORTS)


if TYPE_CHECKING:
    from .cache import Cache, open_cache
    from .check import CheckReport
    from .errors import CachekeeperError
    from .facts import Fact, Facts, Source
    from .fingerprint import observe
    from .keys import CacheKey, FactChange, derive_key, derive_keys, explain
    from .layers import DEFAULT_LAYERS, Layer
    from .manifest import Manifest
    from .prune import PrunePolicy, execute_prune, plan_prune
    from .runtime import Activation, activate
    from .scope import Scope
    from .store import Artifact, Root, Roots
    from .target import Target, find_target, load_target
