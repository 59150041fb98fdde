"""Attack: any directory could be a root. ``--root $HOME`` or ``--root /`` was accepted, and a
prune's clean-up of unfinished builds deleted an unrelated directory there whose name looked like
``X/X-…-<16 hex>`` and was an hour old, without a dry run showing it. Now only a root cachekeeper
made (``.cachekeeper/root.json``) is ever pruned, only its known layer directories are looked into,
and a dry run shows everything the real run removes.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

import cachekeeper
from cachekeeper import uses
from cachekeeper.leftovers import LEFTOVER_AGE
from cachekeeper.prune import PrunePolicy, execute_prune, plan_prune
from cachekeeper.runtime import PRIVATE
from cachekeeper.store import Root, Roots

from .adversary import invoke, snapshot

LOOKALIKE = "compile/compile-mine-0123456789abcdef"
DESTRUCTIVE = [("prune", "--older-than", "0s", "--yes"), ("prune", "--older-than", "0s", "--dry-run"), ("doctor",)]


def _plant(directory: Path, relative: str = LOOKALIKE, *, age: float = 7200) -> Path:
    """A directory that looks like an unfinished build, untouched for ``age`` seconds."""
    planted = directory / relative
    planted.mkdir(parents=True, exist_ok=True)
    (planted / "thesis.tex").write_text("years of work")
    then = time.time() - age
    for path in (planted, planted / "thesis.tex", planted.parent):
        os.utime(path, (then, then))
    return planted


@pytest.mark.parametrize("where", ["home", "slash", "above-home"])
@pytest.mark.parametrize("command", DESTRUCTIVE, ids=" ".join)
def test_home_slash_and_above_are_refused(tmp_path, monkeypatch, where, command):
    home = tmp_path / "home" / "me"
    home.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    planted = _plant(home)
    root = {"home": home, "slash": Path("/"), "above-home": home.parent}[where]
    before = snapshot(home)
    outcome = invoke("--root", str(root), *command)
    outcome.assert_usage_error()
    assert "home directory" in outcome.err and snapshot(home) == before and planted.exists()


@pytest.mark.parametrize("command", DESTRUCTIVE, ids=" ".join)
def test_an_unmarked_directory_is_refused_and_left_as_it_is(tmp_path, command):
    unmarked = tmp_path / "projects"
    _plant(unmarked)
    (unmarked / ".cachekeeper" / "sidecars").mkdir(parents=True)  # looks used, was never made a root
    before = snapshot(unmarked)
    outcome = invoke("--root", str(unmarked), *command)
    outcome.assert_usage_error()
    assert "not a cache root" in outcome.err and "cachekeeper --root" in outcome.err
    assert snapshot(unmarked) == before


def test_a_boot_refuses_home_as_its_root_and_boots_cold_privately(tmp_path, monkeypatch, caplog):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    with cachekeeper.activate(home, layers=["compile"]) as ck:
        use = ck.layers["compile"]
        assert use.status == PRIVATE and home not in use.path.parents
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "home directory" in warnings[0] and "private directory" in warnings[0]
    assert not (home / ".cachekeeper").exists()


def test_init_marks_an_older_root_and_then_prune_works(tmp_path):
    older = tmp_path / "older"
    (older / ".cachekeeper").mkdir(parents=True)
    assert invoke("--root", str(older), "prune", "--older-than", "0s", "--yes").code == 2
    made = invoke("--root", str(older), "init", "--json")
    assert made.code == 0 and json.loads(made.out)["roots"][0]["marked_now"] is True
    assert invoke("--root", str(older), "init", "--json").out.count('"marked_now":false') == 1
    assert invoke("--root", str(older), "prune", "--older-than", "0s", "--yes").code == 0


def _prune_at(manifest, root: Path, at: float, *, dry_run: bool = False):
    """What a prune at ``at`` of this host's clock would clear (dry run) or cleared."""
    roots = Roots.at(root)
    plan = plan_prune(manifest, roots, PrunePolicy.of(older_than=30 * 86400), now=at)
    return plan.leftovers if dry_run else execute_prune(plan, manifest, roots, now=at).leftovers


def test_in_a_marked_root_only_known_layer_directories_hold_leftovers(root, manifest):
    elsewhere = [_plant(root, f"{name}/{name}-mine-0123456789abcdef") for name in ("thesis", "data", "photos")]
    nested = _plant(root, "compile/sub/compile-mine-0123456789abcdef")
    real = _plant(root, "compile/compile-cpu-0123456789abcdef")  # a build killed long ago
    now = time.time()
    assert not _prune_at(manifest, root, now)  # first sight: nothing is old to this host yet
    would = _prune_at(manifest, root, now + LEFTOVER_AGE, dry_run=True)
    assert would.partial_builds == ("compile/compile-cpu-0123456789abcdef",)
    assert _prune_at(manifest, root, now + LEFTOVER_AGE) == would  # the dry run showed exactly what went
    assert not real.exists() and all(path.exists() for path in [*elsewhere, nested])


def test_a_leftover_in_use_or_changing_is_kept(root, manifest):
    changing = _plant(root, "compile/compile-cpu-00000000000000aa")
    used = _plant(root, "compile/compile-cpu-00000000000000bb")
    now = time.time()
    _prune_at(manifest, root, now)
    (changing / "more.o").write_text("a slow build writes on")
    registration = uses.register(Root(root), "compile", used.name)
    try:
        done = _prune_at(manifest, root, now + LEFTOVER_AGE)
    finally:
        registration.release()
    assert done.partial_builds == ()
    assert changing.exists() and used.exists()
    # Released, and unchanged since the last look for LEFTOVER_AGE: both go now.
    later = _prune_at(manifest, root, now + 2 * LEFTOVER_AGE).partial_builds
    assert later == (f"compile/{changing.name}", f"compile/{used.name}")
