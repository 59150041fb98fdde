"""prune: exactly what is old, nothing else, nothing outside the root, and a killed prune finishes."""

from __future__ import annotations

import time

import cachekeeper
from cachekeeper.leases import leases_for
from cachekeeper.manifest import DELETING
from cachekeeper.prune import execute_prune, plan_prune
from cachekeeper.store import Root, Roots, publish, read_sidecar
from cachekeeper.sync import sync

from .helpers import make_hf_model, tree
from .test_store import artifact

DAY = 86400.0


def put(root, manifest, key, *, age_days, layer="compile", size=10):
    then = time.time() - age_days * DAY
    record = artifact(key, layer=layer, relpath=f"{layer}/{key}", created_at=then, last_used_at=then, bytes=size)
    (root / record.relpath).mkdir(parents=True)
    (root / record.relpath / "data").write_bytes(b"x" * size)
    publish(Root(root), record)
    manifest.record_artifact(record)
    return record


def test_older_than_removes_exactly_the_unused_ones(root, manifest):
    old = put(root, manifest, "compile-a-00000000000000aa", age_days=10)
    new = put(root, manifest, "compile-b-00000000000000bb", age_days=1)
    plan = plan_prune(manifest, older_than=7 * DAY)
    assert [a.key for a in plan.removals] == [old.key] and plan.bytes == 10
    result = execute_prune(plan, manifest, Roots.at(root))
    assert [a.key for a in result.removed] == [old.key] and result.skipped == ()
    assert not (root / old.relpath).exists() and read_sidecar(Root(root), "compile", old.key) is None
    assert (root / new.relpath).exists() and [a.key for a in manifest.artifacts()] == [new.key]
    assert manifest.count_events("pruned") == 1


def test_a_plan_alone_touches_nothing(root, manifest):
    put(root, manifest, "compile-a-00000000000000aa", age_days=10)
    before = tree(root)
    assert plan_prune(manifest, older_than=DAY).removals
    assert tree(root) == before


def test_an_artifact_being_built_or_used_under_a_lease_is_kept(root, manifest):
    old = put(root, manifest, "compile-a-00000000000000aa", age_days=10)
    lease = leases_for(Root(root), manifest).acquire("compile", old.key)
    try:
        result = execute_prune(plan_prune(manifest, older_than=DAY), manifest, Roots.at(root))
    finally:
        lease.release()
    assert result.removed == () and "lease" in result.skipped[0][1]
    assert (root / old.relpath).exists()


def test_a_prune_killed_after_unpublishing_is_finished_by_the_next(root, manifest):
    old = put(root, manifest, "compile-a-00000000000000aa", age_days=10)
    manifest.set_state(old.key, DELETING)
    (Root(root).sidecar_path("compile", old.key)).unlink()
    assert manifest.artifacts() == []  # ls and check no longer count it as published
    plan = plan_prune(manifest, older_than=365 * DAY)
    assert [a.key for a in plan.removals] == [old.key]
    execute_prune(plan, manifest, Roots.at(root))
    assert not (root / old.relpath).exists() and manifest.artifacts(state=None) == []


def test_a_hostile_relpath_is_refused_and_nothing_outside_is_touched(root, manifest, tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious").write_text("keep")
    then = time.time() - 10 * DAY
    hostile = artifact("compile-x-00000000000000cc", relpath="../victim", created_at=then, last_used_at=then)
    manifest.record_artifact(hostile)
    result = execute_prune(plan_prune(manifest, older_than=DAY), manifest, Roots.at(root))
    assert result.removed == () and "refusing path" in result.skipped[0][1]
    assert (victim / "precious").read_text() == "keep"


def test_weights_are_removed_through_huggingface_hub(root, manifest):
    weights = root / "weights"
    keep_sha = make_hf_model(weights, "org/keep", {"config.json": b"{}"})
    gone_sha = make_hf_model(weights, "org/gone", {"config.json": b"{}", "w.bin": b"w" * 50})
    with cachekeeper.activate(root, model="org/gone", revision=gone_sha, layers=["weights"]):
        pass
    sync(manifest, Roots.at(root))
    [record] = manifest.artifacts(layer="weights")
    result = execute_prune(plan_prune(manifest, older_than=0, now=time.time() + 1), manifest, Roots.at(root))
    assert [a.key for a in result.removed] == [record.key]
    assert not (weights / "models--org--gone" / "snapshots" / gone_sha).exists()
    assert (weights / "models--org--keep" / "snapshots" / keep_sha / "config.json").exists()
