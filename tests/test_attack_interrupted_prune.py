"""Attack: rows left ``deleting`` by an interrupted prune skipped every guard. Pins, uses, live
snapshots, and the scope and policy of the prune that finds them now apply to such a row as to
any other: an artifact pinned and used again since its removal was interrupted keeps its files.
"""

from __future__ import annotations

import pytest

from cachekeeper import uses
from cachekeeper.pins import set_pinned
from cachekeeper.prune import PrunePolicy, execute_prune, plan_prune
from cachekeeper.store import DELETING, Root, Roots, unpublish

from .helpers import put, tree

KEY = "compile-a-00000000000000aa"


def _interrupted(root, manifest, *, unpublished: bool, **put_options):
    """An artifact a prune marked ``deleting`` and was killed on: before or after its sidecar went."""
    record = put(root, manifest, KEY, age_days=30, **put_options)
    manifest.set_state(record.key, DELETING)
    if unpublished:
        unpublish(Root(root), record.layer, record.key)
    return record


def _prune(root, manifest, **policy):
    roots = Roots.at(root)
    return execute_prune(plan_prune(manifest, roots, PrunePolicy.of(**policy)), manifest, roots)


@pytest.mark.parametrize("unpublished", [False, True], ids=["sidecar-left", "sidecar-gone"])
def test_a_pin_since_the_interruption_keeps_the_files(root, manifest, unpublished):
    record = _interrupted(root, manifest, unpublished=unpublished)
    set_pinned(manifest, Roots.at(root), record.key, pinned=True)
    files = tree(root / "compile" / record.key)
    result = _prune(root, manifest, older_than=0)
    assert result.removed == () and tree(root / "compile" / record.key) == files


def test_a_hit_since_the_interruption_keeps_the_files_while_in_use(root, manifest):
    record = _interrupted(root, manifest, unpublished=False)
    registration = uses.register(Root(root), "compile", record.key)  # what a boot that hits does first
    try:
        result = _prune(root, manifest, older_than=0)
    finally:
        registration.release()
    assert record.key not in {a.key for a in result.removed}
    assert (root / "compile" / record.key / "data").exists()


def test_a_live_snapshot_keeps_what_it_was_built_from(root, manifest):
    record = _interrupted(root, manifest, unpublished=True)
    put(root, manifest, "snapshot-a-00000000000000bb", age_days=0, depends_on=[record.key])
    result = _prune(root, manifest, older_than=7 * 86400)
    assert result.removed == () and (root / "compile" / record.key / "data").exists()


@pytest.mark.parametrize(
    "policy",
    [{"layer": "snapshot", "older_than": 0}, {"model": "org/other", "older_than": 0}, {"older_than": 365 * 86400}],
    ids=["other-layer", "other-model", "too-young-for-the-policy"],
)
def test_scope_and_policy_apply_to_an_unfinished_removal(root, manifest, policy):
    record = _interrupted(root, manifest, unpublished=True)
    result = _prune(root, manifest, **policy)
    assert result.removed == () and (root / "compile" / record.key / "data").exists()
    assert manifest.artifacts(state=DELETING)[0].key == record.key
