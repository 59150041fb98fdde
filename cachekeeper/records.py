"""Records: what a boot or a command writes down (a hit, a publish, a pin, a fingerprint...).

The same records travel in journal lines (journal.py) and are folded into the manifest's event
table, so their format lives here alone: one ``Kind`` per thing that happens, one ``Record`` type
that parses and validates itself. A line damaged or written by something else costs its own line,
never the fold of everything else.

Records are frozen values (values.py), cheap to define: a boot defines and makes them.
"""

from __future__ import annotations

import builtins
import json
import math
import time
import uuid
from collections.abc import Mapping
from enum import StrEnum
from typing import Any

from .errors import CachekeeperError
from .facts import Facts, FactValue, freeze, thaw
from .keys import is_layer_name, parse_key
from .values import Value


class Kind(StrEnum):
    OBSERVED = "observed"  # facts: the environment a process ran in
    HIT = "hit"  # a layer's artifact was found and used
    MISS = "miss"  # a layer had nothing to use, and this process published nothing
    PUBLISHING = "publishing"  # about to write a sidecar: if the writer dies right after, sync finds it
    PUBLISHED = "published"  # this process built and published an artifact (its sidecar exists)
    MISMATCH = "mismatch"  # observed facts contradicted what the target declared
    INNER_MISS = "inner_miss"  # a boot hit, yet vLLM compiled anew inside the artifact (a key too coarse)
    PINNED = "pinned"  # journaled by the CLI, like everything containers do, so doctor can rebuild pins
    UNPINNED = "unpinned"
    PRUNED = "pruned"  # a prune removed an artifact
    CLOSED = "closed"  # the writer finished: nothing more will be appended to its journal
    STRIKE = "strike"  # a boot hit the artifact and then failed (``reason`` says how); see strikes.py
    STRIKE_CLEARED = "strike_cleared"  # a boot succeeded on it: the strike ``ref`` no longer counts
    QUARANTINED = "quarantined"  # moved out of its key's way as ``ref`` (see quarantine.py)
    UNQUARANTINED = "unquarantined"  # ``ref`` moved back and published again


# Kinds the manifest applies beyond storing their event (quarantine.fold_records).
FOLDED_APART = (Kind.STRIKE, Kind.STRIKE_CLEARED, Kind.QUARANTINED, Kind.UNQUARANTINED, Kind.PRUNED)
# Kinds that describe what happened to one artifact, and are counted by stats.
BOOT_KINDS = (Kind.HIT, Kind.MISS, Kind.PUBLISHED)
# Kinds that name a key whose layer must agree with it (sync reads the sidecar they name).
_KEYED = (
    Kind.PUBLISHING,
    Kind.PUBLISHED,
    Kind.PINNED,
    Kind.UNPINNED,
    Kind.INNER_MISS,
    Kind.STRIKE,
    Kind.STRIKE_CLEARED,
    Kind.QUARANTINED,
    Kind.UNQUARANTINED,
)
# Kinds whose key must belong to their layer: sync reads the sidecar or quarantined record they name.
_OF_LAYER = (
    Kind.PUBLISHING,
    Kind.PUBLISHED,
    Kind.STRIKE,
    Kind.STRIKE_CLEARED,
    Kind.QUARANTINED,
    Kind.UNQUARANTINED,
)
_TEXT_FIELDS = ("layer", "key", "model", "host", "fact", "reason", "ref")


class Record(Value):
    """One thing that happened, as journaled and as folded into the manifest.

    ``uid`` makes folding idempotent: a record is applied by whoever stores its uid first.
    ``at`` is the writer's clock (Unix seconds). ``seconds`` is the duration of the boot that
    wrote it; ``facts`` the fingerprint of an ``observed`` record; ``fact``, ``declared`` and
    ``observed`` the contradiction of a ``mismatch``; ``reason`` why a strike or quarantine
    happened, for people; ``ref`` the record or quarantined name one refers to; ``dirs`` the vLLM
    hash directories an ``inner_miss`` found new, and ``factors`` what vLLM hashed differently there
    (factor, old, new). Like a mismatch's contradiction, these two stay in the journal: the
    manifest counts the event.
    """

    uid: str
    kind: Kind
    at: float
    layer: str | None = None
    key: str | None = None
    model: str | None = None
    host: str | None = None
    seconds: float | None = None
    bytes: int | None = None
    facts: Facts | None = None
    fact: str | None = None
    declared: FactValue = None
    observed: FactValue = None
    reason: str | None = None
    ref: str | None = None
    dirs: tuple[str, ...] | None = None
    factors: tuple[tuple[str, FactValue, FactValue], ...] | None = None

    @classmethod
    def new(cls, kind: Kind, **fields: Any) -> Record:
        """A record of ``kind`` happening now, with a fresh uid."""
        return cls(uuid.uuid4().hex, kind, time.time(), **fields)

    def to_json(self) -> dict[str, Any]:
        """The journal line's fields: only those that are set."""
        data: dict[str, Any] = {"uid": self.uid, "kind": str(self.kind), "at": self.at}
        for name in ("layer", "key", "model", "host", "seconds", "bytes", "fact", "reason", "ref"):
            value = getattr(self, name)
            if value is not None:
                data[name] = value
        if self.facts is not None:
            data["facts"] = self.facts.to_json()
        if self.kind is Kind.MISMATCH:
            data["declared"], data["observed"] = thaw(self.declared), thaw(self.observed)
        if self.dirs is not None:
            data["dirs"] = list(self.dirs)
        if self.factors is not None:
            data["factors"] = [{"factor": name, "old": thaw(old), "new": thaw(new)} for name, old, new in self.factors]
        return data

    def to_line(self) -> str:
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":")) + "\n"

    @classmethod
    def from_line(cls, line: builtins.bytes) -> Record:
        """Parse one journal line; raises ValueError naming what is wrong."""
        data = json.loads(line)
        # NUL and lone surrogates reach a line only as \\u escapes, and databases refuse both.
        if b"\\u" in line and not _storable(data):
            raise ValueError("it holds a NUL or a lone surrogate")
        return cls.from_json(data)

    @classmethod
    def from_json(cls, data: Any) -> Record:
        """Parse a journal line's object; raises ValueError naming what is wrong.

        Only the shape the manifest stores is accepted: text where text goes, finite numbers that
        fit a 64-bit column, a layer that is a layer name, and keys that are keys of that layer.
        """
        if not isinstance(data, Mapping) or not isinstance(data.get("uid"), str):
            raise ValueError("not a record: no uid")
        try:
            kind = Kind(str(data.get("kind")))
        except ValueError:
            raise ValueError(f"unknown record kind {data.get('kind')!r}") from None
        if not _number(data.get("at")):
            raise ValueError("its time is not a number")
        for name in _TEXT_FIELDS:
            if data.get(name) is not None and not isinstance(data[name], str):
                raise ValueError(f"its {name} is not text")
        if data.get("seconds") is not None and not _number(data["seconds"]):
            raise ValueError("its duration is not a number")
        size = data.get("bytes")
        if size is not None and not (isinstance(size, int) and _number(size)):
            raise ValueError("its size is not a whole number")
        layer = data.get("layer")
        if layer is not None and not is_layer_name(layer):
            raise ValueError(f"{layer!r} is not a layer name")
        if kind in _KEYED:
            try:
                key_layer, _ = parse_key(data.get("key") or "")
            except CachekeeperError:
                raise ValueError(f"{data.get('key')!r} is not a cache key") from None
            if key_layer != layer and kind in _OF_LAYER:
                raise ValueError(f"key {data.get('key')} does not belong to layer {layer}")
        facts = None
        if kind is Kind.OBSERVED:
            try:
                facts = Facts.from_json(data["facts"])
            except (AttributeError, KeyError, TypeError, ValueError):
                raise ValueError("its facts are not facts") from None
        try:
            declared, observed = freeze(data.get("declared")), freeze(data.get("observed"))
        except TypeError as error:
            raise ValueError(str(error)) from None
        dirs, factors = _dirs(data.get("dirs")), _factor_triples(data.get("factors"))
        return cls(
            data["uid"],
            kind,
            float(data["at"]),
            layer,
            data.get("key"),
            data.get("model"),
            data.get("host"),
            None if data.get("seconds") is None else float(data["seconds"]),
            size,
            facts,
            data.get("fact"),
            declared,
            observed,
            data.get("reason"),
            data.get("ref"),
            dirs,
            factors,
        )


def _dirs(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError("its dirs are not a list of names")
    return tuple(value)


def _factor_triples(value: Any) -> tuple[tuple[str, FactValue, FactValue], ...] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise ValueError("its factors are not a list")
    triples = []
    for item in value:
        if not isinstance(item, Mapping) or not isinstance(item.get("factor"), str):
            raise ValueError("a factor has no name")
        try:
            triples.append((item["factor"], freeze(item.get("old")), freeze(item.get("new"))))
        except TypeError as error:
            raise ValueError(str(error)) from None
    return tuple(triples)


def _number(value: Any) -> bool:
    """A finite number that fits a 64-bit column."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return math.isfinite(value) if isinstance(value, float) else abs(value) < 2**63


def _storable(data: Any) -> bool:
    try:
        text = json.dumps(data, ensure_ascii=False)
        text.encode()
    except UnicodeEncodeError:
        return False
    return "\\u0000" not in text
