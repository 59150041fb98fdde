"""Booting cold in a private directory: what a boot does whenever the shared cache cannot be used
safely (another process builds the key, the root is read-only or broken, the artifact has struck
out). The directory is this process's alone and is removed when it exits."""

from __future__ import annotations

import atexit
import logging
import shutil
import tempfile
from pathlib import Path

from ..keys import CacheKey
from ..layers import Layer
from ..store import Root
from .claims import PRIVATE, Claim, LayerUse

logger = logging.getLogger("cachekeeper")


def private_dir(layer: str) -> Path:
    """A fresh temporary directory for ``layer``, removed at exit."""
    path = Path(tempfile.mkdtemp(prefix=f"cachekeeper-{layer}-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def private_claim(layer: Layer, key: CacheKey, root: Root, why: str | None = None) -> Claim:
    """``layer`` booted cold in a private directory; ``why`` is logged as one warning line."""
    if why is not None:
        logger.warning("cachekeeper: %s; %s boots cold in a private directory", why, layer.name)
    return Claim(layer, LayerUse(layer.name, key, PRIVATE, private_dir(layer.name)), root)
