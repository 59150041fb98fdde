"""Serving from a root that cannot be written: Modal's ``Volume.read_only()``, a read-only mount.

Such a root is the safe way to serve: nothing a server does can damage what a warm-up built. A boot
finds out before it writes anything (``guard.read_only``), and then writes nothing there at all: a hit
is served read-only, a miss boots cold in a private directory, and no journal, use file, lease,
attempt or sidecar is written. What it would have recorded goes to the server manifest when the
boot has one (``db=``): its hits and misses, its strikes, and its use (runtime/served.py), which
prune honours. Without one, nothing records that it serves (README: what prune can protect).

Where a hit's variables point:

- weights: ``HF_HUB_CACHE`` at the layer's directory itself; huggingface_hub reads a complete
  snapshot without writing;
- a layer without variables (``snapshot``): the artifact itself;
- a layer whose variables point compilers at the artifact (``compile``, a custom layer with
  ``env``): a private copy of the artifact, by default (``read_only_hits="copy"``). Compilers
  write into their caches on a hit too: Inductor takes lock files there even when everything is
  cached (torch 2.13 on a CPU), and writes new entries for a shape the warm-up never ran or when
  vLLM misses its own cache inside ours (torch 2.11 with Triton 3.6 on an H200); on a read-only
  directory each of these raises and stops the boot, which it would not do without cachekeeper.
  ``read_only_hits="direct"`` points them at the artifact itself, for artifacts known to be
  complete (measured to boot on the H200), and costs no copy.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import UnsafePath
from ..keys import CacheKey
from ..layers import WEIGHTS, Layer
from ..store import Root, descriptors, read_sidecar
from .claims import HIT, Claim, LayerUse, private_claim, private_dir

if TYPE_CHECKING:
    from .served import ServedUses

logger = logging.getLogger("cachekeeper")

COPY = "copy"
DIRECT = "direct"
HIT_MODES = (COPY, DIRECT)


def claim_read_only(layer: Layer, key: CacheKey, root: Root, mode: str, served: ServedUses | None = None) -> Claim:
    """This boot's use of one layer on a read-only root: a hit, or a private cold boot."""
    token = _register(served, layer.name, str(key))
    try:
        claimed = _look(layer, key, root, mode)
    except BaseException:
        _drop(served, token)
        raise
    if not claimed.use.hit:
        _drop(served, token)
    return claimed


def _look(layer: Layer, key: CacheKey, root: Root, mode: str) -> Claim:
    if read_sidecar(root, layer.name, str(key)) is None:
        return private_claim(layer, key, root)
    if layer.name == WEIGHTS:
        return Claim(layer, LayerUse(WEIGHTS, key, HIT, root.layer_dir(WEIGHTS)), root)
    parts = root.artifact_parts(layer.name, str(key))
    directory = root.path.joinpath(*parts)
    subdirectories = {sub for _, sub in layer.env if sub}
    try:
        for subdirectory in ("", *sorted(subdirectories)):
            with descriptors.opened(root.path, (*parts, subdirectory) if subdirectory else parts) as found:
                if found is None and subdirectory:
                    mode = COPY  # a variable would point at a directory that cannot be made
    except UnsafePath as error:
        return private_claim(layer, key, root, f"not using {'/'.join(parts)}: {error}")
    if not layer.env or mode == DIRECT:
        return Claim(layer, LayerUse(layer.name, key, HIT, directory), root)
    return Claim(layer, LayerUse(layer.name, key, HIT, _copy(directory, layer.name)), root)


def _copy(directory: Path, layer: str) -> Path:
    """A private, writable copy of a published artifact (links inside it copied as links). Files
    get this process's modes, not the artifact's: a root made read-only by permissions would
    otherwise make a copy nobody can write either."""
    copy = private_dir(layer)
    shutil.copytree(directory, copy, symlinks=True, dirs_exist_ok=True, copy_function=shutil.copyfile)
    for folder, _, _ in os.walk(copy):
        os.chmod(folder, os.stat(folder).st_mode | stat.S_IWUSR | stat.S_IXUSR)
    return copy


def _register(served: ServedUses | None, layer: str, key: str) -> str | None:
    if served is None:
        return None
    try:
        return served.register(layer, key)
    except Exception as error:  # the boot goes on; only prune's view of it is lost
        logger.warning(
            "cachekeeper: could not record in the manifest that this server uses %s (%s): prune cannot see it",
            key,
            error,
        )
        return None


def _drop(served: ServedUses | None, token: str | None) -> None:
    if served is not None and token is not None:
        served.drop(token)
