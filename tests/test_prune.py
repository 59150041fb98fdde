"""prune: each policy removes exactly what it should, never what is pinned, in use, or a live
snapshot's source, nothing outside the root, and a killed prune is finished by the next."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

import cachekeeper
from cachekeeper import uses
from cachekeeper.deploy import target_facts
from cachekeeper.errors import UsageError
from cachekeeper.hub import UNTRACKED, hub_revisions
from cachekeeper.keys import derive_keys
from cachekeeper.leases import leases_for
from cachekeeper.prune import PrunePolicy, execute_prune, plan_prune
from cachekeeper.records import Record
from cachekeeper.store import DELETING, Root, Roots, read_sidecar
from cachekeeper.sync import sync
from cachekeeper.target import load_target

from .helpers import DAY, REPO_ROOT, artifact, make_hf_model, put, tree


def plan(root, manifest, *, now=None, **policy):
    return plan_prune(manifest, Roots.at(root), PrunePolicy.of(**policy), now=now)


def removed_keys(result_or_plan):
    return sorted(a.key for a in getattr(result_or_plan, "removals", None) or result_or_plan.removed)


@pytest.fixture
def fleet(root, manifest):
    """Many artifacts of every kind: two models, compile and snapshot layers, old and new, one
    pinned, one in use by this process, and a live snapshot built from old weights and compile."""
    a = {
        "old": put(root, manifest, "compile-a-00000000000000a1", age_days=30, size=100),
        "mid": put(root, manifest, "compile-a-00000000000000a2", age_days=10, size=100),
        "new": put(root, manifest, "compile-a-00000000000000a3", age_days=1, size=100),
        "other_old": put(root, manifest, "compile-b-00000000000000b1", age_days=20, model="org/other", size=50),
        "other_new": put(root, manifest, "compile-b-00000000000000b2", age_days=2, model="org/other", size=50),
        "pinned": put(root, manifest, "compile-a-00000000000000c1", age_days=40, size=100),
        "used": put(root, manifest, "compile-a-00000000000000c2", age_days=40, size=100),
        "source": put(root, manifest, "compile-a-00000000000000c3", age_days=40, size=100),
    }
    a["snapshot"] = put(
        root, manifest, "snapshot-a-00000000000000d1", age_days=3, size=20, depends_on=[a["source"].key]
    )
    manifest.fold([_pin(a["pinned"].key)], [], {})
    registration = uses.register(Root(root), "compile", a["used"].key)
    yield a
    registration.release()


def _pin(key, kind="pinned", at=None):
    return Record.from_json(
        {"uid": f"{kind}-{key}-{at}", "kind": kind, "key": key, "at": at or time.time(), "host": "h:1"}
    )


def test_older_than_removes_exactly_the_unused_and_says_why_the_rest_stays(root, manifest, fleet):
    before = tree(root)
    planned = plan(root, manifest, older_than=7 * DAY)
    assert tree(root) == before  # a plan touches nothing
    assert removed_keys(planned) == sorted(fleet[n].key for n in ("old", "mid", "other_old"))
    assert planned.bytes == 250
    reasons = planned.reasons
    assert reasons[fleet["pinned"].key] == ("pinned",)
    assert reasons[fleet["used"].key][0].startswith("in use by ")
    assert reasons[fleet["source"].key] == (f"the live snapshot {fleet['snapshot'].key} was built from it",)
    assert reasons[fleet["new"].key] == ("used 1 day ago, within 1w",)
    assert reasons[fleet["old"].key] == ("not used for 1w (used 4 weeks ago)",)
    result = execute_prune(planned, manifest, Roots.at(root))
    assert removed_keys(result) == removed_keys(planned) and result.skipped == ()
    for name in ("old", "mid", "other_old"):
        assert not (root / fleet[name].relpath).exists()
        assert read_sidecar(Root(root), "compile", fleet[name].key) is None
    for name in ("new", "other_new", "pinned", "used", "source", "snapshot"):
        assert (root / fleet[name].relpath / "data").exists()
    assert manifest.count_events("pruned") == 3
    assert not list((root / ".cachekeeper" / "checksums" / "compile").glob("compile-a-00000000000000a1.*"))


def test_keep_last_keeps_the_newest_per_model_and_layer(root, manifest, fleet):
    planned = plan(root, manifest, keep_last=1)
    # org/m compile: newest is "new"; org/other compile: "other_new"; the snapshot is alone.
    assert removed_keys(planned) == sorted(fleet[n].key for n in ("old", "mid", "other_old"))
    assert planned.reasons[fleet["new"].key] == ("among the 1 most recently used of org/m compile",)
    both = plan(root, manifest, keep_last=2, older_than=15 * DAY)
    assert removed_keys(both) == [fleet["old"].key]  # "other_old" is among org/other's last two


def test_max_size_evicts_least_recently_used_until_the_scope_fits(root, manifest, fleet):
    total = sum(a.bytes for a in fleet.values())  # 720
    planned = plan(root, manifest, max_size=total - 120)
    # LRU order among what may go: old (30 d, 100) then other_old (20 d, 50): 150 ≥ 120.
    assert removed_keys(planned) == sorted([fleet["old"].key, fleet["other_old"].key])
    assert "evicted to fit" in planned.reasons[fleet["old"].key][0]
    assert planned.over_budget == 0
    impossible = plan(root, manifest, max_size=0)
    # The snapshot is evicted, so what it was built from may go as well; pins and uses stay.
    assert {a.key for a in impossible.kept} == {fleet["pinned"].key, fleet["used"].key}
    assert impossible.over_budget == 200
    assert [a.key for a in impossible.removals].index(fleet["snapshot"].key) == 0
    floor = plan(root, manifest, max_size=0, keep_last=1)
    assert fleet["new"].key not in removed_keys(floor) and fleet["other_new"].key not in removed_keys(floor)


def test_max_files_evicts_in_the_same_order_with_the_same_protections(root, manifest, fleet):
    files = sum(a.files for a in fleet.values())  # one file each: 9
    planned = plan(root, manifest, max_files=files - 2)
    assert removed_keys(planned) == sorted([fleet["old"].key, fleet["other_old"].key])
    assert planned.reasons[fleet["old"].key][0].endswith(f"evicted to fit {files - 2:,} files")
    impossible = plan(root, manifest, max_files=0)
    assert {a.key for a in impossible.kept} == {fleet["pinned"].key, fleet["used"].key}
    assert impossible.over_files == 2 and impossible.over_budget == 0


def test_size_and_file_budgets_combine_until_both_fit(root, manifest, fleet):
    total = sum(a.bytes for a in fleet.values())
    files = sum(a.files for a in fleet.values())
    by_size = plan(root, manifest, max_size=total - 120)  # two go: old and other_old
    by_files = plan(root, manifest, max_files=files - 3)  # three go: old, other_old, mid
    both = plan(root, manifest, max_size=total - 120, max_files=files - 3)
    assert removed_keys(both) == sorted({*removed_keys(by_size), *removed_keys(by_files)})
    assert "evicted to fit" in both.reasons[fleet["mid"].key][0] and " and " in both.reasons[fleet["mid"].key][0]


def test_layer_model_and_key_narrow_the_scope(root, manifest, fleet):
    assert removed_keys(plan(root, manifest, older_than=0, model="org/other")) == sorted(
        [fleet["other_old"].key, fleet["other_new"].key]
    )
    assert removed_keys(plan(root, manifest, older_than=0, layer="snapshot")) == [fleet["snapshot"].key]
    assert removed_keys(plan(root, manifest, keys=[fleet["mid"].key, fleet["pinned"].key])) == [fleet["mid"].key]


def test_a_snapshot_goes_before_what_it_was_built_from_and_a_kept_one_keeps_them(root, manifest, fleet):
    planned = plan(root, manifest, older_than=2 * DAY)
    order = [a.key for a in planned.removals]
    assert order[0] == fleet["snapshot"].key and fleet["source"].key in order
    assert "was built from" not in " ".join(planned.reasons[fleet["source"].key])
    # The snapshot is pinned before the prune runs: it stays, and so does what it was built from.
    manifest.fold([_pin(fleet["snapshot"].key)], [], {})
    result = execute_prune(planned, manifest, Roots.at(root))
    skipped = dict((a.key, why) for a, why in result.skipped)
    assert skipped[fleet["snapshot"].key] == "pinned"
    assert skipped[fleet["source"].key] == f"the live snapshot {fleet['snapshot'].key} was built from it"
    assert (root / fleet["source"].relpath / "data").exists()


def test_one_prune_removes_a_snapshot_and_what_it_was_built_from(root, manifest, fleet):
    result = execute_prune(plan(root, manifest, older_than=2 * DAY), manifest, Roots.at(root))
    removed = [a.key for a in result.removed]
    assert fleet["snapshot"].key in removed and fleet["source"].key in removed, result.skipped
    assert not (root / fleet["source"].relpath).exists()


def test_roots_are_checked_again_just_before_each_removal(root, manifest, fleet):
    planned = plan(root, manifest, older_than=7 * DAY)
    late = uses.register(Root(root), "compile", fleet["old"].key)
    lease = leases_for(Root(root), manifest).acquire("compile", fleet["mid"].key)
    try:
        result = execute_prune(planned, manifest, Roots.at(root))
    finally:
        late.release()
        lease.release()
    skipped = dict((a.key, why) for a, why in result.skipped)
    assert skipped[fleet["old"].key].startswith("in use by ") and "lease" in skipped[fleet["mid"].key]
    assert removed_keys(result) == [fleet["other_old"].key]


def test_unpinning_lets_it_go_and_the_newest_pin_record_wins(root, manifest, fleet):
    key = fleet["pinned"].key
    manifest.fold([_pin(key, "unpinned", at=time.time() + 1), _pin(key, "pinned", at=time.time() - 100)], [], {})
    assert key not in manifest.pinned()
    assert key in removed_keys(plan(root, manifest, older_than=7 * DAY))


def test_a_use_by_a_process_that_died_does_not_protect(root, manifest):
    old = put(root, manifest, "compile-a-00000000000000aa", age_days=10)
    code = (
        "import pathlib, time; from cachekeeper import uses; from cachekeeper.store import Root;"
        f"uses.register(Root(pathlib.Path({str(root)!r})), 'compile', {old.key!r});"
        "print('ready', flush=True); time.sleep(60)"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT)
    try:
        assert child.stdout.readline().strip() == "ready"
        assert plan(root, manifest, older_than=DAY).removals == ()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert list(Root(root).uses_dir("compile", old.key).iterdir())  # killed: nothing cleaned up
    result = execute_prune(plan(root, manifest, older_than=DAY), manifest, Roots.at(root))
    assert removed_keys(result) == [old.key]
    assert not Root(root).uses_dir("compile", old.key).exists()


def test_stale_removes_what_no_target_derives(root, manifest, tmp_path):
    target_file = tmp_path / "cachekeeper.toml"
    target_file.write_text('[target]\ngpu = "cpu"\nlayers = ["compile"]\n[target.engine]\nwidth = 8\n')
    target = load_target(target_file)
    current = str(derive_keys(target_facts(target, None, Roots.at(root).hf_cache()), target.layers)["compile"])
    live = put(root, manifest, current, age_days=100)
    stale = put(root, manifest, "compile-cpu-00000000000000ee", age_days=0)
    planned = plan(root, manifest, stale=True, targets=[target])
    assert removed_keys(planned) == [stale.key]
    assert planned.reasons[stale.key] == ("stale: no target derives this key",)
    assert planned.reasons[live.key] == ("a target still derives this key",)
    with pytest.raises(UsageError, match="--stale needs"):
        plan(root, manifest, stale=True)
    with pytest.raises(UsageError, match="needs a policy"):
        plan(root, manifest)


def test_weights_go_through_huggingface_hub_and_a_target_revision_is_a_root(root, manifest, tmp_path):
    weights = root / "weights"
    keep_sha = make_hf_model(weights, "org/keep", {"config.json": b"{}"})
    gone_sha = make_hf_model(weights, "org/gone", {"config.json": b"{}", "w.bin": b"w" * 50})
    with cachekeeper.activate(root, model="org/gone", revision=gone_sha, layers=["weights"]) as ck:
        pass
    sync(manifest, Roots.at(root))
    [record] = manifest.artifacts(layer="weights")
    assert record.key == str(ck.keys["weights"])
    # Still in use by this process after the block: a server goes on reading its weights.
    assert plan(root, manifest, older_than=0, model="org/gone").reasons[record.key][0].startswith("in use by ")
    uses.release_all()
    target_file = tmp_path / "keep.toml"
    target_file.write_text(f'[target]\ngpu = "cpu"\nmodel = "org/keep"\nrevision = "{keep_sha}"\n')
    planned = plan(root, manifest, older_than=0, now=time.time() + 1, targets=[load_target(target_file)])
    [untracked] = [a for a in planned.kept if a.builder == UNTRACKED]
    assert planned.reasons[untracked.key] == ("a target names this weights revision",)
    assert [a.key for a in planned.removals] == [record.key] and planned.bytes == 52
    result = execute_prune(planned, manifest, Roots.at(root))
    assert [a.key for a in result.removed] == [record.key]
    assert not (weights / "models--org--gone").exists()
    assert (weights / "models--org--keep" / "snapshots" / keep_sha / "config.json").exists()
    # A target whose revision cannot be resolved here keeps every revision of its model.
    target_file.write_text('[target]\ngpu = "cpu"\nmodel = "org/keep"\nrevision = "no-such-branch"\n')
    unresolved = plan(root, manifest, older_than=0, now=time.time() + 1, targets=[load_target(target_file)])
    assert unresolved.removals == () and "cannot be resolved" in unresolved.reasons[untracked.key][0]
    # Without the target, the untracked revision (no boot recorded it) is pruned like any other.
    result = execute_prune(plan(root, manifest, older_than=0, now=time.time() + 1), manifest, Roots.at(root))
    assert [(a.model, a.builder) for a in result.removed] == [("org/keep", UNTRACKED)]
    assert not (weights / "models--org--keep").exists()


def test_a_hub_link_leading_out_of_the_cache_is_refused(root, manifest, tmp_path):
    outside = tmp_path / "precious.bin"
    outside.write_bytes(b"keep")
    make_hf_model(root / "weights", "org/evil", {"config.json": b"{}"}, revision="v1")
    sha = make_hf_model(root / "weights", "org/evil", {"config.json": b"{}", "w.bin": b""})
    link = root / "weights" / "models--org--evil" / "snapshots" / sha / "w.bin"
    link.unlink()
    link.symlink_to(outside)
    [evil] = [a for a in hub_revisions(Roots.at(root)) if a.relpath.endswith(sha)]
    result = execute_prune(plan(root, manifest, keys=[evil.key]), manifest, Roots.at(root))
    assert result.removed == () and "outside" in result.skipped[0][1]
    assert outside.read_bytes() == b"keep"


def test_a_prune_killed_after_unpublishing_is_finished_by_the_next(root, manifest):
    old = put(root, manifest, "compile-a-00000000000000aa", age_days=10)
    manifest.set_state(old.key, DELETING)
    (Root(root).sidecar_path("compile", old.key)).unlink()
    assert manifest.artifacts() == []  # ls and check no longer count it as published
    # Its policy and scope still apply: a prune that would not remove it leaves it alone.
    assert plan(root, manifest, older_than=365 * DAY).removals == ()
    planned = plan(root, manifest, older_than=DAY)
    assert [a.key for a in planned.removals] == [old.key]
    assert planned.reasons[old.key][-1] == "finishing a prune that was interrupted"
    execute_prune(planned, manifest, Roots.at(root))
    assert not (root / old.relpath).exists() and manifest.artifacts(state=None) == []


def test_a_hostile_relpath_is_refused_and_nothing_outside_is_touched(root, manifest, tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious").write_text("keep")
    then = time.time() - 10 * DAY
    hostile = artifact("compile-x-00000000000000cc", relpath="../victim", created_at=then, last_used_at=then)
    manifest.record_artifact(hostile)
    result = execute_prune(plan(root, manifest, older_than=DAY), manifest, Roots.at(root))
    assert result.removed == () and "refusing path" in result.skipped[0][1]
    assert (victim / "precious").read_text() == "keep"
