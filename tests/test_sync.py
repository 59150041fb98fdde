"""Folding journals: idempotent, tolerant of torn lines, truthful about what still exists."""

from __future__ import annotations

import json

from cachekeeper import journal
from cachekeeper.records import Kind, Record
from cachekeeper.store import Root, Roots, publish, unpublish
from cachekeeper.sync import sync

from .helpers import artifact, facts


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
