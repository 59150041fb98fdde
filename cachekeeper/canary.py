"""Canaries: a digest of a deterministic result, to catch caches that load fine and compute garbage.

Inside the boot, ``ck.canary(value)`` is given something the model computes the same way every
time when its caches are sound: the greedy completion of a fixed prompt, say, with its logprobs
rounded as far as the user trusts them. The boot that *builds* an artifact stores the digest
beside its sidecar (``<root>/.cachekeeper/canaries/<layer>/<key>.json``), written before the
sidecar, so that a published artifact built with a canary always has it. Every boot that *hits*
compares: a different digest is logged as an error naming both, and counts as a strike
(strikes.py). An artifact built without a canary is never compared: a later boot does not adopt
one, since it could as well enshrine garbage.

Imports only the standard library: this runs inside the boot.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

from .errors import CachekeeperError
from .store import Root, builder_id, write_atomically
from .store.descriptors import read

_FORMAT = 1


def digest(value: Any) -> str:
    """The sha256 of ``value``: bytes as they are, text as UTF-8, anything else as canonical JSON
    (keys sorted, so a dict compares by content). Floats are compared exactly: round them first."""
    if isinstance(value, bytes):
        data = value
    elif isinstance(value, str):
        data = value.encode()
    else:
        try:
            data = json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()
        except (TypeError, ValueError) as error:
            raise TypeError(f"a canary must be bytes, text or plain JSON values: {error}") from None
    return hashlib.sha256(data).hexdigest()


def short(found: str) -> str:
    """A digest as messages show it."""
    return found[:16]


def store(root: Root, layer: str, key: str, found: str) -> None:
    data = {"format": _FORMAT, "digest": found, "at": time.time(), "builder": builder_id()}
    write_atomically(root.canary_path(layer, key), json.dumps(data).encode())


def remove(root: Root, layer: str, key: str) -> None:
    root.canary_path(layer, key).unlink(missing_ok=True)


def stored(root: Root, layer: str, key: str) -> str | None:
    """The digest the builder of ``key`` stored; None when it stored none (or it cannot be read)."""
    path = root.canary_path(layer, key)
    try:
        data = json.loads(read(root.path, path.relative_to(root.path).parts, limit=1 << 16) or b"null")
    except (OSError, ValueError, CachekeeperError):  # a link planted in its place: no canary to trust
        return None
    if not isinstance(data, dict) or data.get("format") != _FORMAT or not isinstance(data.get("digest"), str):
        return None
    return str(data["digest"])
