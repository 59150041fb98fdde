"""Reading the manifest: plain SQL through the database's own driver, giving frozen values.

Reads never load SQLAlchemy on SQLite (the stdlib ``sqlite3`` runs them), so that ``check`` and
``ls`` start in a fraction of a second. Each query's columns are the fields of the value it gives,
so that no column order is kept by hand.
"""

from __future__ import annotations

import calendar
import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from .. import facts as f
from ..facts import Facts
from ..layers import WEIGHTS
from ..store import PUBLISHED, Artifact
from ..values import Value

logger = logging.getLogger("cachekeeper")

Rows = Callable[[str, Mapping[str, Any]], list[Sequence[Any]]]

DAY = 86400.0  # a UTC day in Unix seconds (which count no leap seconds)

# Facts that describe the machine and its software, as opposed to what it was asked to run.
_DEPLOY_PREFIXES = (f.MODEL, f.ENGINE_PREFIX)


class ArtifactSummary(NamedTuple):
    """An artifact as ``ls`` shows it: everything but its facts, which are slow to read in bulk.
    A named tuple, since ``ls`` makes one per row of the whole manifest."""

    key: str
    layer: str
    model: str
    state: str
    relpath: str
    bytes: int
    files: int
    created_at: float
    last_used_at: float

    def to_json(self, root: Path) -> dict[str, Any]:
        """``root``: the root of the artifact's layer, which its path is relative to."""
        return {
            "key": self.key,
            "layer": self.layer,
            "model": self.model,
            "status": self.state,
            "bytes": self.bytes,
            "files": self.files,
            "created_at": self.created_at,
            "last_used_at": self.last_used_at,
            "path": str(root / self.relpath),
        }


class Event(Value):
    """Something the runtime or a command recorded: a hit, miss, publish or prune."""

    at: float
    kind: str
    layer: str | None
    key: str | None
    model: str | None
    seconds: float | None
    bytes: int | None
    host: str | None


class EventCount(NamedTuple):
    """How many events of a kind, layer and model (``""`` when the event named none), and their bytes."""

    kind: str
    layer: str
    model: str
    events: int
    bytes: int


class Observation(Value):
    """An environment fingerprint seen at run time: machine and software, no model or engine."""

    facts: Facts
    gpu_type: str
    host: str
    first_seen_at: float
    last_seen_at: float
    seen: int


def environment_facts(facts: Facts) -> Facts:
    return Facts(tuple(fact for fact in facts if not fact.name.startswith(_DEPLOY_PREFIXES)))


def _columns(names: Sequence[str]) -> str:
    return ", ".join(f'"{name}"' for name in names)


_ARTIFACT = Artifact._fields
_SUMMARY = ArtifactSummary._fields
_EVENT = Event._fields
_OBSERVATION = Observation._fields
_MOST_RECENT_FIRST = " ORDER BY last_used_at DESC, key"


def artifact(rows: Rows, key: str) -> Artifact | None:
    found = rows(f"SELECT {_columns(_ARTIFACT)} FROM artifact WHERE key = :key", {"key": key})
    return _artifact(found[0]) if found else None


def artifacts(
    rows: Rows, *, layer: str | None = None, model: str | None = None, state: str | None = PUBLISHED
) -> list[Artifact]:
    """Artifacts, most recently used first."""
    where, params = _filters(layer=layer, model=model, state=state)
    return _artifacts(rows(f"SELECT {_columns(_ARTIFACT)} FROM artifact{where}{_MOST_RECENT_FIRST}", params))


def candidates(rows: Rows) -> list[Artifact]:
    """Every artifact, most recently used first, with the facts of weights only (a prune's
    candidates: what it plans with needs no facts, what removes weights does)."""
    columns = ", ".join(
        "CASE WHEN layer = :weights THEN facts ELSE '{}' END" if name == "facts" else f'"{name}"' for name in _ARTIFACT
    )
    return _artifacts(rows(f"SELECT {columns} FROM artifact{_MOST_RECENT_FIRST}", {"weights": WEIGHTS}))


def nearest(rows: Rows, *, layer: str, model: str, other_than: str) -> Artifact | None:
    """The most recently used published artifact of ``layer`` and ``model`` under another key."""
    where, params = _filters(layer=layer, model=model, state=PUBLISHED)
    query = f"SELECT {_columns(_ARTIFACT)} FROM artifact{where} AND key <> :other_than{_MOST_RECENT_FIRST} LIMIT 1"
    found = _artifacts(rows(query, {**params, "other_than": other_than}))
    return found[0] if found else None


def summaries(
    rows: Rows, *, layer: str | None = None, model: str | None = None, limit: int | None = None
) -> list[ArtifactSummary]:
    """Every artifact (the ``limit`` most recently used), in any state, most recently used first,
    without its facts."""
    where, params = _filters(layer=layer, model=model)
    cut = "" if limit is None else f" LIMIT {int(limit)}"
    query = f"SELECT {_columns(_SUMMARY)} FROM artifact{where}{_MOST_RECENT_FIRST}{cut}"
    return list(map(ArtifactSummary._make, rows(query, params)))


def summary_pages(
    rows: Rows, *, layer: str | None = None, model: str | None = None, limit: int | None = None, first: int, size: int
) -> Iterator[list[ArtifactSummary]]:
    """``summaries``, a page at a time: ``first`` rows, then ``size`` at a time, up to ``limit``.

    Each page is a query of its own, resuming after the last row of the one before (keyset
    paging), so that nothing holds the database while the caller prints. A row used again while
    the pages are read moves to the top, and is not listed twice nor missed by more than that move.
    """
    where, params = _filters(layer=layer, model=model)
    query = f"SELECT {_columns(_SUMMARY)} FROM artifact{where}"
    after = " AND last_used_at <= :last AND (last_used_at < :last OR key > :key)"
    left = limit
    page = first
    last: ArtifactSummary | None = None
    while left is None or left > 0:
        wanted = page if left is None else min(page, left)
        resume = {} if last is None else {"last": last.last_used_at, "key": last.key}
        sql = f"{query}{after if last else ''}{_MOST_RECENT_FIRST} LIMIT {int(wanted)}"
        found = list(map(ArtifactSummary._make, rows(sql, {**params, **resume})))
        if found:
            yield found
        if len(found) < wanted:
            return
        last, page = found[-1], size
        left = None if left is None else left - len(found)


class Stored(NamedTuple):
    """What the artifacts of one layer and model hold, as recorded at publish (and by ``verify``)."""

    artifacts: int
    bytes: int
    files: int

    @classmethod
    def per_layer(cls, stored: Mapping[tuple[str, str], Stored]) -> dict[str, Stored]:
        """``stored`` summed over models: layer → what its artifacts hold."""
        found: dict[str, Stored] = {}
        for (layer, _), each in sorted(stored.items()):
            total = found.get(layer, cls(0, 0, 0))
            found[layer] = cls(total.artifacts + each.artifacts, total.bytes + each.bytes, total.files + each.files)
        return found

    def to_json(self) -> dict[str, int]:
        return {"artifacts": self.artifacts, "bytes": self.bytes, "files": self.files}


def stored(rows: Rows, *, layer: str | None = None, model: str | None = None) -> dict[tuple[str, str], Stored]:
    """(layer, model) → what their artifacts hold, in any state; counted by the database, not by
    reading every row."""
    where, params = _filters(layer=layer, model=model)
    query = f"SELECT layer, model, count(*), sum(bytes), sum(files) FROM artifact{where} GROUP BY layer, model"
    return {
        (str(layer), str(model)): Stored(int(count), int(size or 0), int(files or 0))
        for layer, model, count, size, files in rows(query, params)
    }


def keys_in_state(rows: Rows, state: str) -> list[tuple[str, str]]:
    """(layer, key) of every artifact in ``state``."""
    return [
        (layer, key) for layer, key in rows("SELECT layer, key FROM artifact WHERE state = :state", {"state": state})
    ]


def dependents(rows: Rows) -> dict[str, list[str]]:
    """For each key that published artifacts depend on: the keys of those artifacts."""
    found: dict[str, list[str]] = {}
    query = "SELECT key, depends_on FROM artifact WHERE state = :state AND CAST(depends_on AS TEXT) <> '[]'"
    for key, depends_on in rows(query, {"state": PUBLISHED}):
        for dependency in _json(depends_on) or ():
            found.setdefault(dependency, []).append(key)
    return found


def pinned(rows: Rows) -> set[str]:
    return {key for (key,) in rows("SELECT key FROM pin WHERE pinned", {})}


def journal_cursors(rows: Rows, names: Sequence[str] | None = None) -> dict[str, tuple[int, bool]]:
    """(offset, closed) of the journals named, or of every journal ever folded."""
    query = 'SELECT name, "offset", closed FROM journal_cursor'
    if names is None:
        found = rows(query, {})
    else:
        found = [row for chunk in chunks(list(names)) for row in rows(*_where_in(query, "name", chunk))]
    return {name: (int(offset), bool(closed)) for name, offset, closed in found}


def latest_observation(rows: Rows, gpu_type: str) -> Observation | None:
    """The newest fingerprint seen on ``gpu_type`` (a Modal type, or "cpu" for no GPU)."""
    query = (
        f"SELECT {_columns(_OBSERVATION)} FROM observation WHERE gpu_type = :gpu_type "
        "ORDER BY last_seen_at DESC LIMIT 1"
    )
    found = rows(query, {"gpu_type": gpu_type})
    if not found:
        return None
    facts, *rest = found[0]
    return Observation(Facts.from_json(_json(facts)), *rest)


def events(rows: Rows, *, since: float | None = None, kinds: Sequence[str] | None = None) -> list[Event]:
    """Events at or after ``since`` (Unix seconds), oldest first."""
    query = f"SELECT {_columns(_EVENT)} FROM event WHERE at >= :since"
    params: dict[str, Any] = {"since": float("-inf") if since is None else since}
    if kinds is not None:
        names: dict[str, str | None] = {f"kind{index}": str(kind) for index, kind in enumerate(kinds)}
        names = names or {"kind0": None}  # no kind at all: match nothing
        query += f" AND kind IN ({', '.join(':' + name for name in names)})"
        params.update(names)
    return [Event(*row) for row in rows(query + " ORDER BY at, id", params)]


def event_counts(rows: Rows, *, since: float | None = None, kinds: Sequence[str]) -> list[EventCount]:
    """Per kind, layer and model: the events of ``kinds`` at or after ``since``, and the daily
    summaries of older events from the UTC day of ``since`` on (whole days: a summary has no
    hours). One statement, so that events summarised meanwhile are counted once."""
    names = {f"kind{index}": str(kind) for index, kind in enumerate(kinds)} or {"kind0": ""}
    among = f"kind IN ({', '.join(':' + name for name in names)})"
    query = (
        "SELECT kind, layer, model, sum(n), sum(b) FROM ("
        " SELECT kind, coalesce(layer, '') AS layer, coalesce(model, '') AS model, 1 AS n, coalesce(bytes, 0) AS b"
        f" FROM event WHERE at >= :since AND {among}"
        " UNION ALL"
        f" SELECT kind, layer, model, count AS n, bytes AS b FROM event_summary WHERE day >= :day AND {among}"
        ") AS counted GROUP BY kind, layer, model ORDER BY kind, layer, model"
    )
    params: dict[str, Any] = {
        "since": float("-inf") if since is None else since,
        "day": "" if since is None else utc_day(since),
        **names,
    }
    return [EventCount(kind, layer, model, int(n), int(size)) for kind, layer, model, n, size in rows(query, params)]


def summarised_before(rows: Rows) -> float | None:
    """The end of the last UTC day whose events were summarised (and deleted), or None: events
    before it are in ``event_summary`` only, except those folded since, which are events still."""
    [(day,)] = rows("SELECT max(day) FROM event_summary", {})
    if not day:
        return None
    try:
        return calendar.timegm(time.strptime(day, "%Y-%m-%d")) + DAY
    except ValueError:  # a day no calendar holds: summarised times far in the past or future
        return float("-inf") if day < "0001" else float("inf")


def utc_day(at: float) -> str:
    """``YYYY-MM-DD`` of the UTC day of ``at``; times no calendar holds sort before or after all."""
    try:
        return time.strftime("%Y-%m-%d", time.gmtime(at))
    except (OverflowError, OSError, ValueError):
        return "0000-00-00" if at < 0 else "9999-99-99"


def count_events(rows: Rows, kind: str) -> int:
    return int(rows("SELECT count(*) FROM event WHERE kind = :kind", {"kind": str(kind)})[0][0])


def lease_keys(rows: Rows) -> list[tuple[str, str]]:
    """(layer, key) of every lease row."""
    return [(layer, key) for layer, key in rows("SELECT layer, key FROM lease", {})]


def lease(rows: Rows, layer: str, key: str) -> dict[str, Any] | None:
    """The lease row's fields (owner, token, expires_at, process), or None."""
    names = ("owner", "token", "expires_at", "process")
    found = rows(
        f"SELECT {_columns(names)} FROM lease WHERE layer = :layer AND key = :key", {"layer": layer, "key": key}
    )
    return dict(zip(names, found[0], strict=True)) if found else None


def leases(rows: Rows) -> list[dict[str, Any]]:
    """Every lease row's fields (layer, key, owner, token, expires_at, process), by key."""
    names = ("layer", "key", "owner", "token", "expires_at", "process")
    found = rows(f"SELECT {_columns(names)} FROM lease ORDER BY layer, key", {})
    return [dict(zip(names, row, strict=True)) for row in found]


class Sighting(NamedTuple):
    """When an observer first saw a thing as it is now (``digest``), by the observer's own clock."""

    digest: str
    first_seen_at: float


def sightings(rows: Rows, observer: str, things: Sequence[str] | None = None) -> dict[str, Sighting]:
    """What ``observer`` remembers of ``things`` (default: of everything it has seen)."""
    query = "SELECT thing, digest, first_seen_at FROM sighting WHERE observer = :observer"
    if things is None:
        found = rows(query, {"observer": observer})
    else:
        found = []
        for chunk in chunks(list(things)):
            where, names = _where_in("", "thing", chunk)
            found += rows(f"{query} AND {where.removeprefix(' WHERE ')}", {**names, "observer": observer})
    return {str(thing): Sighting(str(value), float(first)) for thing, value, first in found}


def _artifact(row: Sequence[Any]) -> Artifact | None:
    """The artifact a row records; None (and a warning) for a row whose names cannot be trusted:
    a damaged or hostile row is never acted on."""
    values = dict(zip(_ARTIFACT, row, strict=True))
    try:
        values["facts"] = {name: f.freeze(value) for name, value in _json(values["facts"]).items()}
        values["depends_on"] = tuple(str(key) for key in _json(values["depends_on"]) or ())
        return Artifact(**values).checked()
    except (AttributeError, TypeError, ValueError) as error:
        logger.warning("cachekeeper: ignoring the manifest row of %r: %s", values.get("key"), error)
        return None


def _artifacts(found: list[Sequence[Any]]) -> list[Artifact]:
    return [artifact for artifact in map(_artifact, found) if artifact is not None]


def _json(value: Any) -> Any:
    """A JSON column's value: SQLite hands back text, PostgreSQL's driver the decoded value."""
    if value == "{}":  # most rows of a prune's candidates: no parse needed
        return {}
    if value == "[]":
        return []
    return json.loads(value) if isinstance(value, (str, bytes)) else value


def _filters(**equal: str | None) -> tuple[str, dict[str, str]]:
    """`` WHERE a = :a AND ...`` for the filters that are set, and their parameters."""
    params = {column: value for column, value in equal.items() if value is not None}
    if not params:
        return " WHERE 1 = 1", {}
    return " WHERE " + " AND ".join(f"{column} = :{column}" for column in params), params


def _where_in(query: str, column: str, values: Sequence[str]) -> tuple[str, dict[str, str]]:
    names = {f"v{index}": value for index, value in enumerate(values)}
    return f"{query} WHERE {column} IN ({', '.join(':' + name for name in names)})", names


def chunks(values: list[str], size: int = 500) -> list[list[str]]:
    """``values`` in pieces small enough for one statement's parameters."""
    return [values[start : start + size] for start in range(0, len(values), size)]
