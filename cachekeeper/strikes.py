"""Strikes: boots that hit an artifact and then failed, counted where every container sees them.

A cache that loads but crashes (a half-written file, a stale kernel, one configuration poisoning
another) is hit by every new container until someone removes it. So a boot that hits an artifact
leaves an *attempt* beside it, and settles it when its ``activate()`` block ends:

- the block succeeded: the attempt goes, and so do the strikes this boot saw (the artifact works);
- the block raised, the command under ``cachekeeper run`` exited non-zero, or the canary did not
  match: the attempt becomes a *strike*, with the reason;
- the process died inside the block (a segfault loading a kernel, ``os._exit``): its attempt
  stays. The next boot of the key, or ``sync``, makes it a strike once its process is proven gone
  or its use (uses.py) has lapsed: never while it may still run.

Each attempt and strike is a small file of its own, ``<root>/.cachekeeper/strikes/<layer>/<key>/``,
written once by one process: containers on a Volume, which has no locks and where the last writer
of a file wins, never write the same file. Strikes are records too (``Kind.STRIKE``), journaled
and folded into the manifest; the files are what a boot counts, with one directory listing, and
the manifest is where a read-only server, which writes no file, leaves its strikes. A key's
directory outlives its records, for the next boot's attempt: making and removing it cost every
warm boot half a millisecond. ``sync`` removes those left empty.

A boot that counts ``strikes`` (default 2) within ``window`` (default a day) quarantines the
artifact (quarantine.py) and builds it afresh. The window compares each strike's recorded time
with the boot's clock: a clock off by minutes moves only strikes at the window's edge, and the
worst a wrong count does is a quarantine that ``cachekeeper unquarantine`` undoes.

Imports only the standard library and cachekeeper's boot-time modules: this runs inside the boot.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from . import uses
from .errors import CachekeeperError
from .layers import WEIGHTS
from .records import Kind, Record
from .store import Root, builder_id, write_atomically
from .store.descriptors import opened, remove
from .store.layout import STRIKES, key_name
from .values import Value

DEFAULT_STRIKES = 2
DEFAULT_WINDOW = 86400.0
_ATTEMPT = "attempt"
_STRIKE = "strike"


def struck(layer: str) -> bool:
    """Whether boots strike artifacts of ``layer``: every layer but the weights, which live in
    huggingface_hub's own layout (a damaged shard is for ``verify`` to find)."""
    return layer != WEIGHTS


class Strike(Value):
    """A boot that hit ``key`` and failed: when, why, and which process (``host``: host:pid)."""

    uid: str
    layer: str
    key: str
    at: float
    reason: str
    host: str

    def record(self, model: str | None = None) -> Record:
        return Record(self.uid, Kind.STRIKE, self.at, self.layer, self.key, model, self.host, reason=self.reason)


class Attempt(Value):
    """A boot that hit ``key`` and has not said yet how its block ended: ``owner`` is host:pid, as
    its use record says; ``process`` (processes.this_process()) where its pid can be proven gone."""

    uid: str
    layer: str
    key: str
    at: float
    owner: str
    process: str


class Tally(Value):
    """What lies beside one artifact: its strikes, and the attempts of boots not settled yet."""

    strikes: tuple[Strike, ...] = ()
    attempts: tuple[Attempt, ...] = ()


def look(root: Root, layer: str, key: str) -> Tally:
    """The strikes and attempts of ``key``: one directory listing, which usually finds nothing.
    A record that cannot be read counts for nothing (unknown: keep the artifact)."""
    directory = root.strikes_dir(layer, key)
    try:
        names = sorted(os.listdir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return Tally()
    strikes: list[Strike] = []
    attempts: list[Attempt] = []
    for name in names:
        kind, _, rest = name.partition("-")
        data = _read(directory / name) if kind in (_ATTEMPT, _STRIKE) and rest.endswith(".json") else None
        try:
            if data is None or (data.get("layer"), data.get("key")) != (layer, key):
                continue
            if kind == _STRIKE:
                strikes.append(
                    Strike(str(data["uid"]), layer, key, float(data["at"]), str(data["reason"]), str(data["host"]))
                )
            else:
                attempts.append(
                    Attempt(str(data["uid"]), layer, key, float(data["at"]), str(data["owner"]), str(data["process"]))
                )
        except (KeyError, TypeError, ValueError):
            continue
    return Tally(tuple(strikes), tuple(attempts))


def attempt(root: Root, layer: str, key: str) -> Attempt:
    """Say that this process hit ``key`` and is booting on it. Not synced to disk: a machine that
    crashes may lose it, which costs a strike that would not have been certain anyway."""
    from .processes import this_process  # read only by boots that hit

    made = Attempt(uuid.uuid4().hex, layer, key, time.time(), builder_id(), str(this_process()))
    path = root.strike_path(layer, key, f"{_ATTEMPT}-{made.uid}.json")
    write_atomically(path, json.dumps(made._asdict()).encode(), durable=False)
    return made


def settle(root: Root, made: Attempt) -> None:
    """This boot ended well enough: its attempt goes."""
    _remove(root.strike_path(made.layer, made.key, f"{_ATTEMPT}-{made.uid}.json"))


def strike(root: Root, made: Attempt, reason: str, *, at: float | None = None) -> Strike | None:
    """Make ``made`` a strike: the strike file first, then the attempt goes. None when another
    process made it a strike already (the strike takes the attempt's uid: one strike per boot)."""
    found = Strike(made.uid, made.layer, made.key, made.at if at is None else at, reason, made.owner)
    path = root.strike_path(made.layer, made.key, f"{_STRIKE}-{made.uid}.json")
    written = write_atomically(path, json.dumps(found._asdict()).encode(), exclusive=True)
    settle(root, made)
    return found if written else None


def clear(root: Root, strikes: Iterable[Strike]) -> list[Record]:
    """Remove strikes that a successful boot outlived; the records that say so."""
    records = []
    for each in strikes:
        _remove(root.strike_path(each.layer, each.key, f"{_STRIKE}-{each.uid}.json"))
        records.append(Record.new(Kind.STRIKE_CLEARED, layer=each.layer, key=each.key, host=builder_id(), ref=each.uid))
    return records


def forget(root: Root, layer: str, key: str) -> None:
    """Remove every record beside ``key``: for a new artifact of the key, or one quarantined."""
    directory = root.strikes_dir(layer, key)
    remove(root.path, directory.relative_to(root.path).parts)


def dead_attempts(root: Root, tally: Tally) -> list[Strike]:
    """Make a strike of every attempt whose boot died inside its block: its process is proven gone,
    or its use of the artifact has lapsed (a boot settles its attempt before it drops its use, so
    an attempt that outlived its use was left by a process that died). Never an attempt of this
    process, nor any while a use record cannot be read (it may be that boot's)."""
    if not tally.attempts:
        return []
    from .processes import process_gone

    layer, key = tally.attempts[0].layer, tally.attempts[0].key
    mine = builder_id()
    live = uses.users(root, layer, key)
    owners = {use.owner for use in live}
    unknown = any(use.owner.startswith("unreadable") for use in live)
    made = []
    for each in tally.attempts:
        if each.owner == mine:
            continue
        gone = process_gone(each.process) or (each.owner not in owners and not unknown)
        # Looked at again after the uses: a boot that settled meanwhile removed it first.
        if not gone or not root.strike_path(layer, key, f"{_ATTEMPT}-{each.uid}.json").exists():
            continue
        found = strike(root, each, f"the boot {each.owner} hit it and died inside its activate() block")
        if found is not None:
            made.append(found)
    return made


def struck_keys(root: Root) -> Iterator[tuple[str, str]]:
    """(layer, key) of every key with a directory of strikes and attempts (maybe left empty by
    boots that settled), for ``sync``."""
    for layer, name in sorted(root.keys_with(STRIKES)):
        try:
            yield layer, key_name(layer, name)
        except CachekeeperError:
            continue  # not a key: not ours


def strike_records(found: Sequence[Strike], model: str | None = None) -> list[Record]:
    return [each.record(model) for each in found]


def _read(path: Path) -> dict[str, Any] | None:
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
        with os.fdopen(descriptor, "rb") as handle:
            data = json.loads(handle.read(1 << 16))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def tidy(root: Root, layer: str, key: str) -> None:
    """Remove the directory of ``key``'s records if none is left (a boot's attempt made meanwhile
    keeps it: only an empty directory can be removed, and a writer makes it again when missing).
    Reached by directory descriptors, as every removal below a root: never through a link."""
    *parents, name = root.strikes_dir(layer, key).relative_to(root.path).parts
    try:
        with opened(root.path, parents) as directory:
            if directory is not None:
                os.rmdir(name, dir_fd=directory)
    except (OSError, CachekeeperError):
        pass  # not empty, gone already, or reached through a link: left as it is


def _remove(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass  # the root went away
