"""Sidecars: the small record that makes an artifact exist, written last and removed first."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from .. import facts as f
from ..errors import UnsafePath
from ..facts import Facts, FactValue, Source, freeze, thaw
from ..keys import CacheKey, derive_key, parse_key
from ..layers import WEIGHTS, layer_named
from ..values import Value
from .layout import SIDECARS, Root, checksum_name, key_name

# An artifact's states in the manifest.
PUBLISHED = "published"
DELETING = "deleting"  # a prune removed the sidecar and is removing the files
SIDECAR_FORMAT = 1


class Artifact(Value):
    """What a sidecar says, and what the manifest indexes: one published artifact.

    ``relpath`` is relative to the layer's root, so the same Volume mounted elsewhere still works.
    Times are Unix seconds. ``depends_on`` names the artifacts this one was built from (a snapshot's
    weights and compile keys), which must live as long as it does. ``checksum`` is the digest of
    the per-file checksums recorded at publish (see ``Contents``); None for artifacts published
    before checksums were recorded.
    """

    key: str
    layer: str
    model: str
    relpath: str
    bytes: int
    files: int
    created_at: float
    last_used_at: float
    builder: str
    facts: Mapping[str, FactValue]
    depends_on: tuple[str, ...] = ()
    checksum: str | None = None

    def checked(self) -> Artifact:
        """This artifact, when the names a path will be made of are sound; else a ValueError.
        Every artifact is checked where it is made: from a sidecar, a manifest row, a Hub scan, a
        build."""
        try:
            key_name(self.layer, self.key)
            if self.checksum is not None:
                checksum_name(self.checksum)
        except UnsafePath as error:
            raise ValueError(str(error)) from None
        return self

    def cache_key(self) -> CacheKey:
        layer, digest = parse_key(self.key)
        label = self.key[len(layer) + 1 : -len(digest) - 1]
        return CacheKey(layer, label, digest, Facts.from_values(self.facts, Source.OBSERVED))

    def to_json(self) -> dict[str, Any]:
        data = self._asdict()
        data["facts"] = {name: thaw(value) for name, value in self.facts.items()}
        return {"format": SIDECAR_FORMAT, **data}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Artifact:
        """Parse a sidecar; raises ValueError naming what is wrong."""
        if not isinstance(data, Mapping) or data.get("format") != SIDECAR_FORMAT:
            raise ValueError(f"not a sidecar of format {SIDECAR_FORMAT}")
        try:
            artifact = cls(
                key=str(data["key"]),
                layer=str(data["layer"]),
                model=str(data["model"]),
                relpath=str(data["relpath"]),
                bytes=int(data["bytes"]),
                files=int(data["files"]),
                created_at=float(data["created_at"]),
                last_used_at=float(data["last_used_at"]),
                builder=str(data["builder"]),
                facts={str(k): freeze(v) for k, v in dict(data["facts"]).items()},
                depends_on=tuple(str(key) for key in data.get("depends_on", ())),
                checksum=None if data.get("checksum") is None else str(data["checksum"]),
            ).checked()
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"sidecar field missing or malformed: {error}") from None
        return artifact


def artifact_parts(root: Root, artifact: Artifact) -> tuple[str, ...]:
    """The directory that ``artifact``'s key owns under ``root``, as names: ``<layer>/<key>``, or
    for weights the Hub snapshot of the model and commit that derive its key.

    The names come from the key (and, for weights, from the facts that derive it), never from the
    recorded ``relpath``; a record whose ``relpath`` says anything else (a whole layer, the state
    directory, another artifact's directory, a path out of the root) is refused as damaged or
    hostile. Callers reach the directory by descriptor (store.descriptors), so that a link on the
    way is refused, and the directory itself, if a link, is removed as one and never followed.
    """
    if artifact.layer == WEIGHTS:
        model, sha = artifact.facts.get(f.MODEL), artifact.facts.get(f.MODEL_REVISION)
        derived = derive_key(layer_named(WEIGHTS), Facts.from_values(artifact.facts, Source.OBSERVED))
        if not (isinstance(model, str) and isinstance(sha, str)) or str(derived) != artifact.key:
            raise UnsafePath(f"refusing {artifact.key}: its model and revision do not derive its key")
        parts: tuple[str, ...] = root.hub_snapshot_parts(model, sha)
    else:
        parts = root.artifact_parts(artifact.layer, artifact.key)
    if artifact.relpath != "/".join(parts):
        raise UnsafePath(f"refusing path {artifact.relpath!r} of {artifact.key}: it is not the directory the key owns")
    return parts


def artifact_path(root: Root, artifact: Artifact) -> Path:
    """``artifact_parts`` as a path, for reading and showing; removals go by descriptor."""
    return root.path.joinpath(*artifact_parts(root, artifact))


class UnreadableSidecar(Value):
    """A sidecar that exists but cannot be read: damaged, truncated, written in a newer format, or
    copied from another key. Not an artifact anyone may use, and not proof that there is none:
    whoever wrote it may still use the key's files, so they are kept (see ``look_up_sidecar``)."""

    path: Path
    reason: str


def look_up_sidecar(root: Root, layer: str, key: str) -> Artifact | UnreadableSidecar | None:
    """The published artifact for ``key``; None only when there is no sidecar at all.

    An unreadable sidecar is neither: a boot must not use the artifact, nor take it for an
    unfinished build and clear it (a newer cachekeeper may have published it, and a server may be
    using it). Unknown means keep.
    """
    path = root.sidecar_path(layer, key)
    try:
        artifact = Artifact.from_json(json.loads(path.read_bytes()))
    except FileNotFoundError:
        return UnreadableSidecar(path, "a link to nothing") if os.path.lexists(path) else None
    except (OSError, ValueError) as error:
        return UnreadableSidecar(path, str(error))
    # A sidecar copied or renamed under another key's name does not make that key exist.
    if (artifact.layer, artifact.key) != (layer, key):
        return UnreadableSidecar(path, f"it records {artifact.key}, another key")
    return artifact


def read_sidecar(root: Root, layer: str, key: str) -> Artifact | None:
    """The published artifact for ``key``, or None when there is none or it is unreadable (only
    for trusting an artifact: to tell the two apart, ``look_up_sidecar``)."""
    found = look_up_sidecar(root, layer, key)
    return found if isinstance(found, Artifact) else None


def iter_sidecars(root: Root) -> Iterator[tuple[Path, Artifact | ValueError]]:
    """Every sidecar under ``root``: the parsed artifact, or the error that stopped parsing it."""
    for layer, directory in root.state_layers(SIDECARS):
        for path in sorted(directory.glob("*.json")):
            try:
                artifact = Artifact.from_json(json.loads(path.read_bytes()))
            except (OSError, ValueError) as error:
                yield path, ValueError(f"{path}: {error}")
                continue
            if (artifact.layer, artifact.key) != (layer, path.stem):
                yield path, ValueError(f"{path}: it records {artifact.key}, another key")
            else:
                yield path, artifact
