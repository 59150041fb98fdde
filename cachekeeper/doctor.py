"""``doctor``: rebuild the manifest from what the root itself says, and report what was found.

The manifest is an index; the truth is on disk. Sidecars say which artifacts exist, and the
journals (``journal/`` and ``journal/folded/``, compacted files included) hold every hit, miss,
publish, prune, pin and observed fingerprint ever recorded. A lost manifest is created anew, a
damaged SQLite manifest is moved aside (never deleted) and replaced, and either way both sources
are folded in again: folding is idempotent, so on a healthy manifest doctor only adds what was
missing (events of days already summarised into daily counts are not folded again).

Doctor never deletes an artifact: it forgets manifest rows whose sidecar is gone (no boot would
use them anyway), and leaves rows marked ``deleting`` for the next prune to finish.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

from .budget import RootFiles, files_per_root
from .errors import ManifestError, ManifestUnreachable, SchemaTooNew, UnsafeRoot
from .journal import SUFFIX, journal_files, read_journal
from .manifest import DatabaseUrl, Manifest
from .manifest.connection import first_line
from .manifest.migration import revisions
from .quarantine import fold_records
from .records import Record
from .store import DELETING, PUBLISHED, Artifact, Roots, check_state, iter_sidecars
from .sync import sync
from .target import DEFAULT_FILE_BUDGET
from .values import Value

HEALTHY = "healthy"
CREATED = "created"  # there was no manifest
REPLACED = "replaced"  # the old one was damaged: moved aside, and a new one built


class DoctorReport(Value):
    manifest: str  # HEALTHY, CREATED or REPLACED
    damage: str | None  # what was wrong with the old manifest
    moved_to: Path | None  # where the damaged manifest now is
    sidecars: int  # sidecars read
    indexed: tuple[str, ...]  # keys the manifest did not list
    forgotten: tuple[str, ...]  # rows whose sidecar is gone
    unreadable: tuple[Path, ...]  # sidecars that could not be parsed (left as they are)
    unmounted: tuple[str, ...]  # layers whose root is absent: their rows were left alone
    unfinished: tuple[str, ...]  # rows a killed prune left: the next prune finishes them
    journals: int  # journal files read
    records: int  # journal records applied that the manifest lacked
    files: tuple[RootFiles, ...] = ()  # what each root holds, against its file budget

    @property
    def changed(self) -> bool:
        return self.manifest != HEALTHY or bool(self.indexed or self.forgotten or self.records)

    def to_json(self) -> dict[str, Any]:
        return {
            "manifest": self.manifest,
            "damage": self.damage,
            "moved_to": None if self.moved_to is None else str(self.moved_to),
            "sidecars": self.sidecars,
            "indexed": list(self.indexed),
            "forgotten": list(self.forgotten),
            "unreadable": [str(path) for path in self.unreadable],
            "unmounted": list(self.unmounted),
            "unfinished": list(self.unfinished),
            "journals": self.journals,
            "records": self.records,
            "files": [root.to_json() for root in self.files],
        }


def doctor(
    url: str,
    roots: Roots,
    *,
    max_files: int = DEFAULT_FILE_BUDGET,
    progress: Callable[[int], None] | None = None,
    total: Callable[[int], None] | None = None,
) -> tuple[Manifest, DoctorReport]:
    """Make the manifest at ``url`` agree with the sidecars and journals of ``roots``, and count
    each root's files against ``max_files``.

    ``total`` is told how many files (journals and sidecars) will be read, ``progress`` each time
    some are.
    """
    for root in roots.all():
        root.open_for("repair the manifest of")
        check_state(root)
    manifest, state, damage, moved_to = _open_or_replace(url, roots)
    journal_paths = _journal_paths(roots)
    sidecar_paths = [(root, path, parsed) for root in roots.all() for path, parsed in iter_sidecars(root)]
    if total is not None:
        total(len(journal_paths) + len(sidecar_paths))

    records: list[Record] = []
    for path in journal_paths:
        try:
            records.extend(read_journal(path).records)
        except OSError:
            pass  # moved to folded/ by a concurrent sync: read there
        if progress is not None:
            progress(1)
    artifacts: dict[str, Artifact] = {}
    unreadable = []
    for root, path, parsed in sidecar_paths:
        if isinstance(parsed, Artifact):
            if roots.for_layer(parsed.layer) == root:
                artifacts.setdefault(parsed.key, parsed)
        else:
            unreadable.append(path)
        if progress is not None:
            progress(1)

    before = {a.key for a in manifest.artifacts(state=None)}
    # Events of days already summarised are counted in event_summary and deleted: folding them
    # again would count them twice. A manifest built anew has no summaries, and folds them all.
    summarised = manifest.summarised_before()
    if summarised is not None:
        records = [record for record in records if record.at >= summarised]
    records.sort(key=lambda record: record.at)
    folded = manifest.fold(records, list(artifacts.values()), {})
    fold_records(manifest, roots, records)
    unreadable_keys = {(path.parent.name, path.stem) for path in unreadable}
    forgotten, unmounted = [], set()
    for artifact in manifest.artifacts(state=PUBLISHED):
        if artifact.key in artifacts or (artifact.layer, artifact.key) in unreadable_keys:
            continue
        if not roots.for_layer(artifact.layer).path.is_dir():
            unmounted.add(artifact.layer)  # a Volume not mounted here: its rows are not ours to judge
            continue
        manifest.forget(artifact.key)
        forgotten.append(artifact.key)
    sync(manifest, roots)  # journal cursors, and closed journals moved to folded/
    report = DoctorReport(
        manifest=state,
        damage=damage,
        moved_to=moved_to,
        sidecars=len(sidecar_paths),
        indexed=tuple(sorted(set(artifacts) - before)),
        forgotten=tuple(sorted(forgotten)),
        unreadable=tuple(unreadable),
        unmounted=tuple(sorted(unmounted)),
        unfinished=tuple(sorted(key for _, key in manifest.keys_in_state(DELETING))),
        journals=len(journal_paths),
        records=folded.records,
        files=files_per_root(manifest, roots, max_files),
    )
    return manifest, report


def _journal_paths(roots: Roots) -> list[Path]:
    folded = roots.main.folded_dir
    older = sorted(p for p in folded.glob(f"*{SUFFIX}") if p.is_file()) if folded.is_dir() else []
    return older + list(journal_files(roots.main))


def _open_or_replace(url: str, roots: Roots) -> tuple[Manifest, str, str | None, Path | None]:
    from sqlalchemy.exc import DatabaseError, OperationalError

    path = DatabaseUrl.parse(url).sqlite_file  # a URL that cannot work is the usual one-line error
    if path is not None and not os.path.lexists(path):
        return Manifest.open(url), CREATED, None, None
    if path is not None and not _provably_ours(path, roots):
        raise UnsafeRoot(
            f"refusing to open or replace {path}: it is not a cachekeeper manifest (no schema revision of "
            "cachekeeper's in it, and it is not the manifest of a marked cache root); move it away or point "
            "--db at another file"
        )
    manifest: Manifest | None = None
    try:
        manifest = Manifest.open(url)
        damage = _damage(manifest)
    except (SchemaTooNew, ManifestUnreachable):
        raise  # a newer cachekeeper's manifest, or one that is only locked: not damaged
    except (ManifestError, DatabaseError) as error:
        if isinstance(error, OperationalError) and "locked" in str(error):
            raise ManifestUnreachable(f"the manifest is locked by another process: {error}") from None
        damage = first_line(error)
    if damage is None and manifest is not None:
        return manifest, HEALTHY, None, None
    if path is None:
        raise ManifestError(
            f"the manifest database is damaged ({damage}); doctor replaces only SQLite files: "
            "restore the server's database from a backup, then run doctor again"
        )
    if manifest is not None:
        manifest.engine.dispose()
    moved_to = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
    os.replace(path, moved_to)
    rollback = path.with_name(f"{path.name}-journal")
    if rollback.exists():
        os.replace(rollback, moved_to.with_name(f"{moved_to.name}-journal"))
    return Manifest.open(url), REPLACED, damage, moved_to


def _provably_ours(path: Path, roots: Roots) -> bool:
    """Whether ``path`` is a manifest doctor may move aside: the one in a marked root's state
    directory, or a SQLite file stamped with a schema revision cachekeeper knows. Never a link."""
    if path.is_symlink():
        return False
    if path == roots.main.manifest_path and roots.main.marked():
        return True
    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as connection:
            stamped = connection.execute("SELECT version_num FROM alembic_version").fetchall()
            connection.execute("SELECT count(*) FROM artifact").fetchall()
    except sqlite3.Error:
        return False
    return len(stamped) == 1 and stamped[0][0] in revisions()


def _damage(manifest: Manifest) -> str | None:
    """What is wrong with an open manifest, or None."""
    from sqlalchemy import text

    with manifest.engine.connect() as connection:
        if manifest.engine.dialect.name == "sqlite":
            verdict = connection.execute(text("PRAGMA integrity_check")).scalar()
            if verdict != "ok":
                return f"SQLite integrity check: {verdict}"
        connection.execute(text("SELECT count(*) FROM artifact")).scalar()
    return None
