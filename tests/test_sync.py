"""Folding journals: idempotent, tolerant of torn lines, truthful about what still exists; and
compacting them once folded, so that files and cursor rows stay bounded."""

from __future__ import annotations

import json
import os

import pytest

from cachekeeper import journal
from cachekeeper.errors import UnsafeRoot
from cachekeeper.records import Kind, Record
from cachekeeper.store import Root, Roots, publish, unpublish
from cachekeeper.sync import sync

from .helpers import artifact, facts, tree


def test_a_closed_journal_is_folded_once_and_moved_aside(root, manifest):
    writer = journal.Journal(Root(root))
    writer.append(Record.new(Kind.OBSERVED, facts=facts(), host="h:1"))
    record = artifact()
    publish(Root(root), record)
    writer.append(Record.new(Kind.PUBLISHED, layer="compile", key=record.key, model="org/m", seconds=3.0))
    writer.close()
    report = sync(manifest, Roots.at(root))
    assert (report.journals, report.records, report.artifacts) == (1, 2, 1)
    assert not writer.path.exists() and (writer.path.parent / "folded" / writer.path.name).exists()
    assert sync(manifest, Roots.at(root)).records == 0
    assert manifest.count_events("published") == 1 and manifest.artifact(record.key) is not None


def test_a_torn_last_line_waits_for_its_end(root, manifest):
    writer = journal.Journal(Root(root))
    writer.append(Record.new(Kind.MISS, layer="compile", key="k"))
    line = json.dumps({"uid": "u2", "kind": "miss", "at": 1.0}) + "\n"
    with open(writer.path, "a") as handle:
        handle.write(line[:10])
    assert sync(manifest, Roots.at(root)).records == 1
    with open(writer.path, "a") as handle:
        handle.write(line[10:])
    assert sync(manifest, Roots.at(root)).records == 1
    assert manifest.count_events("miss") == 2


def test_garbage_lines_are_counted_and_skipped(root, manifest):
    writer = journal.Journal(Root(root))
    writer.path.parent.mkdir(parents=True)
    writer.path.write_text('not json\n[1, 2]\n{"kind": "miss"}\n')
    writer.append(Record.new(Kind.MISS, layer="compile", key="k"))
    report = sync(manifest, Roots.at(root))
    assert (report.records, report.unreadable_lines) == (1, 3)


def test_a_published_record_whose_sidecar_is_gone_indexes_nothing(root, manifest):
    record = artifact()
    publish(Root(root), record)
    writer = journal.Journal(Root(root))
    writer.append(Record.new(Kind.PUBLISHED, layer="compile", key=record.key))
    unpublish(Root(root), "compile", record.key)
    assert sync(manifest, Roots.at(root)).artifacts == 0
    assert manifest.artifacts() == []


def test_a_hit_folded_before_its_publish_still_counts(root, manifest):
    record = artifact()
    publish(Root(root), record)
    first, second = journal.Journal(Root(root)), journal.Journal(Root(root))
    # Journals are read in name order; make the hit come first whatever the random names are.
    first.path = first.path.with_name("a-" + first.path.name)
    second.path = second.path.with_name("b-" + second.path.name)
    first.append(Record.new(Kind.HIT, layer="compile", key=record.key))
    second.append(Record.new(Kind.PUBLISHED, layer="compile", key=record.key))
    sync(manifest, Roots.at(root))
    assert manifest.artifact(record.key).last_used_at > record.last_used_at


# --- compacting folded journals --------------------------------------------------------------------

NOW = 1_800_000_000.0  # 2027-01-15 08:00 UTC
DAY = 86400.0


def _closed_journals(root, count, *, days_ago):
    """``count`` closed journals of one record each, last written ``days_ago`` days before NOW
    (one per element); the uids written."""
    uids = set()
    for n in range(count):
        writer = journal.Journal(Root(root))
        record = Record.new(Kind.MISS, layer="compile", key=f"k{n}", model="org/m")
        writer.append(record)
        writer.close()
        then = NOW - days_ago[n % len(days_ago)] * DAY
        os.utime(writer.path, (then, then))
        uids.add(record.uid)
    return uids


def _folded_uids(root):
    """Every uid in journal/folded/, as many times as it appears."""
    found = []
    for path in sorted((root / ".cachekeeper" / "journal" / "folded").glob("*.jsonl")):
        found += [record.uid for record in journal.read_journal(path).records if record.kind is not Kind.CLOSED]
    return sorted(found)


def test_folded_journals_of_past_days_become_one_file_a_day_and_lose_their_cursor_rows(root, manifest):
    uids = _closed_journals(root, 12, days_ago=[3, 2, 2, 0])
    sync(manifest, Roots.at(root), now=NOW)  # folded and moved, not tidied
    folded = root / ".cachekeeper" / "journal" / "folded"
    assert len(list(folded.iterdir())) == 12 and len(manifest.journal_cursors()) == 12

    report = sync(manifest, Roots.at(root), tidy=True, now=NOW)
    assert report.tidied.journals == 9  # today's three stay as they are until tomorrow
    names = sorted(path.name for path in folded.iterdir())
    assert [name[:20] for name in names if name.startswith("compacted-")] == [
        "compacted-2027-01-12",
        "compacted-2027-01-13",
    ]
    assert len(names) == 2 + 3
    assert len(manifest.journal_cursors()) == 3  # the rows of the compacted journals are gone
    assert _folded_uids(root) == sorted(uids)  # every record, once
    assert manifest.count_events("miss") == 12

    # Nothing more to do: nothing changes.
    assert sync(manifest, Roots.at(root), tidy=True, now=NOW).tidied.journals == 0
    assert sorted(path.name for path in folded.iterdir()) == names

    # A day later, today's are compacted too, and a late journal of an old day joins that day's file.
    late = _closed_journals(root, 1, days_ago=[3])
    sync(manifest, Roots.at(root), tidy=True, now=NOW + DAY)
    assert sorted(path.name[:20] for path in folded.iterdir()) == [
        "compacted-2027-01-12",
        "compacted-2027-01-13",
        "compacted-2027-01-15",
    ]
    assert manifest.journal_cursors() == {}
    assert _folded_uids(root) == sorted(uids | late)
    assert manifest.count_events("miss") == 13


def test_a_compacted_file_is_never_followed_through_a_link_nor_a_link_removed(root, manifest, tmp_path):
    _closed_journals(root, 2, days_ago=[2])
    sync(manifest, Roots.at(root), now=NOW)
    outside = tmp_path / "elsewhere.jsonl"
    outside.write_text(Record.new(Kind.MISS).to_line())
    link = root / ".cachekeeper" / "journal" / "folded" / "linked.jsonl"
    link.symlink_to(outside)
    os.utime(link, (NOW - 2 * DAY,) * 2, follow_symlinks=False)
    sync(manifest, Roots.at(root), tidy=True, now=NOW)
    assert link.is_symlink() and outside.read_text().count("\n") == 1
    [compacted] = [p for p in link.parent.iterdir() if p.name.startswith("compacted-")]
    assert len(journal.read_journal(compacted).records) == 4  # the two journals' miss and close


def test_tidying_refuses_a_directory_cachekeeper_did_not_make_a_root(tmp_path, manifest):
    stranger = tmp_path / "stranger"
    _closed_journals(stranger, 2, days_ago=[3])
    sync(manifest, Roots.at(stranger), now=NOW)
    before = tree(stranger)
    with pytest.raises(UnsafeRoot):
        sync(manifest, Roots.at(stranger), tidy=True, now=NOW)
    assert tree(stranger) == before
