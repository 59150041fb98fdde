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
from cachekeeper.runtime import PRIVATE
from cachekeeper.store import Root

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


def test_in_a_marked_root_only_known_layer_directories_hold_leftovers(root):
    elsewhere = [_plant(root, f"{name}/{name}-mine-0123456789abcdef") for name in ("thesis", "data", "photos")]
    nested = _plant(root, "compile/sub/compile-mine-0123456789abcdef")
    real = _plant(root, "compile/compile-cpu-0123456789abcdef")  # a build killed an hour ago
    planned = invoke("--root", str(root), "prune", "--older-than", "30d", "--dry-run", "--json")
    assert planned.code == 0, planned.err
    would = json.loads(planned.out)["leftovers"]
    assert would["partial_builds"] == ["compile/compile-cpu-0123456789abcdef"]
    done = invoke("--root", str(root), "prune", "--older-than", "30d", "--yes", "--json")
    assert json.loads(done.out)["leftovers"] == would  # the dry run showed exactly what went
    assert not real.exists() and all(path.exists() for path in [*elsewhere, nested])


def test_a_leftover_in_use_or_fresh_is_kept(root):
    fresh = _plant(root, "compile/compile-cpu-00000000000000aa", age=10)
    used = _plant(root, "compile/compile-cpu-00000000000000bb")
    registration = uses.register(Root(root), "compile", used.name)
    try:
        done = invoke("--root", str(root), "prune", "--older-than", "30d", "--yes", "--json")
    finally:
        registration.release()
    assert json.loads(done.out)["leftovers"]["partial_builds"] == []
    assert fresh.exists() and used.exists()
