"""Strikes and quarantine: an artifact that keeps failing the boots that hit it is moved out of its
key's way, and the next boot builds it afresh; a boot that succeeds on it clears its strikes.

Boots that die are real processes (tests/boot_child.py): ``os._exit`` and SIGSEGV inside the block,
where no exception handler or atexit hook runs. The rest run in this process, on real roots.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import cachekeeper
from cachekeeper import strikes, uses
from cachekeeper.manifest import Manifest, default_url
from cachekeeper.quarantine import entries
from cachekeeper.runtime import BUILD, HIT, PRIVATE
from cachekeeper.store import Root, Roots, builder_id, read_sidecar

from .adversary import invoke, snapshot
from .boot_child import only_key, run_child
from .helpers import write_target

TARGET = '[target]\ngpu = "cpu"\nlayers = ["compile"]\n'


def boot(root: Path, fail: bool = False, **options) -> str:
    """A boot in this process; it raises inside the block when ``fail``. Its layer's status."""
    try:
        with cachekeeper.activate(root, layers=["compile"], **options) as ck:
            use = ck.layers["compile"]
            if use.status == BUILD:
                (use.path / "inductor" / "kernel.so").write_bytes(b"compiled")
            if fail:
                raise RuntimeError("illegal memory access")
    except RuntimeError:
        pass
    uses.release_all()
    return use.status


def tally(root: Path) -> strikes.Tally:
    return strikes.look(Root(root), "compile", only_key(root))


def test_a_hit_leaves_an_attempt_while_its_block_runs_and_settles_it_after(tmp_path):
    root = tmp_path / "root"
    boot(root)
    with cachekeeper.activate(root, layers=["compile"]) as ck:
        assert ck.layers["compile"].status == HIT
        [attempt] = tally(root).attempts
        assert attempt.owner == builder_id() and attempt.key == only_key(root)
    assert tally(root) == strikes.Tally()
    uses.release_all()


# --- boots that die ------------------------------------------------------------------------------


@pytest.mark.parametrize("death", ["crash", pytest.param("segv", marks=pytest.mark.slow)])
def test_an_artifact_that_kills_its_boot_twice_is_quarantined_and_the_third_boot_builds(tmp_path, death):
    root = tmp_path / "root"
    assert run_child(root, "ok")[1]["status"] == BUILD
    key = only_key(root)
    for attempt in range(2):
        code, layer, _ = run_child(root, death)
        assert code != 0 and layer == {**layer, "status": HIT, "key": key}, (attempt, code, layer)
    assert len(tally(root).attempts) + len(tally(root).strikes) == 2  # the second boot struck the first
    code, layer, err = run_child(root, "ok")
    assert code == 0 and layer["status"] == BUILD, err  # quarantined, then built afresh
    assert "quarantined" in err and "2 failed boot(s)" in err and "died inside its activate() block" in err
    [entry] = entries(Roots.at(root))
    assert entry.key == key and len(entry.reasons) == 2
    moved = root / ".cachekeeper" / "quarantine" / "compile" / entry.name
    assert (moved / "inductor" / "a.so").is_file()  # kept for a person to look at
    assert read_sidecar(Root(root), "compile", key).created_at > entry.artifact.created_at
    assert tally(root) == strikes.Tally()  # the new artifact starts clean
    assert run_child(root, "ok")[1]["status"] == HIT


def test_a_boot_that_died_is_counted_by_sync_too(tmp_path):
    root = tmp_path / "root"
    run_child(root, "ok")
    key = only_key(root)
    assert run_child(root, "crash")[0] == 1
    assert len(tally(root).attempts) == 1
    synced = invoke("--root", str(root), "sync")
    assert synced.code == 0, synced
    [strike] = tally(root).strikes
    assert "died inside its activate() block" in strike.reason
    inspected = json.loads(invoke("--root", str(root), "inspect", key, "--json").out)
    assert [each["reason"] for each in inspected["strikes"]] == [strike.reason]
    manifest = Manifest.open(default_url(Roots.at(root)))
    assert manifest.rows("SELECT uid, cleared FROM strike", {}) == [(strike.uid, 0)]


# --- boots that raise, succeed, or run a command that fails --------------------------------------


def test_a_boot_that_succeeds_clears_the_strikes_it_saw(tmp_path):
    root = tmp_path / "root"
    boot(root)
    assert boot(root, fail=True) == HIT
    assert len(tally(root).strikes) == 1
    assert boot(root) == HIT
    directory = Root(root).strikes_dir("compile", only_key(root))
    assert tally(root) == strikes.Tally() and not any(directory.iterdir())  # kept for the next attempt
    assert boot(root, fail=True) == HIT  # one strike again: not two
    assert boot(root) == HIT and not entries(Roots.at(root))
    assert invoke("--root", str(root), "sync").code == 0
    assert not directory.exists()  # sync removes what no record is left in
    manifest = Manifest.open(default_url(Roots.at(root)))
    assert sorted(cleared for _, cleared in manifest.rows("SELECT uid, cleared FROM strike", {})) == [1, 1]


def test_a_command_that_exits_non_zero_under_run_is_a_strike(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    write_target(tmp_path / "cachekeeper.toml", TARGET)
    root = str(tmp_path / "root")
    failing = [sys.executable, "-c", "import sys; sys.exit(7)"]
    assert invoke("--root", root, "run", "--", sys.executable, "-c", "pass").code == 0
    for _ in range(2):
        ran = invoke("--root", root, "run", "--", *failing)
        assert ran.code == 7 and "compile hit" in ran.err
    assert caplog.text.count("the command exited with 7") == 2
    ran = invoke("--root", root, "run", "--", sys.executable, "-c", "pass")
    assert ran.code == 0 and "compile build" in ran.err and "quarantined" in caplog.text
    # The real command says so on stderr, one line each.
    real = subprocess.run(
        [sys.executable, "-m", "cachekeeper", "--root", root, "run", "--", *failing], capture_output=True, text=True
    )
    assert real.returncode == 7 and "cachekeeper: a strike against compile-" in real.stderr


def test_strikes_zero_never_quarantines_and_old_strikes_do_not_count(tmp_path):
    root = tmp_path / "root"
    boot(root)
    for _ in range(3):
        assert boot(root, fail=True, strikes=0) == HIT
    assert len(tally(root).strikes) == 3 and not entries(Roots.at(root))
    assert boot(root) == BUILD and len(entries(Roots.at(root))) == 1  # the default, 2, quarantines
    # A strike from two days ago does not count within a day, nor within an hour.
    old = strikes.Attempt("0" * 32, "compile", only_key(root), time.time() - 2 * 86400, "elsewhere:1", "")
    strikes.strike(Root(root), old, "a boot two days ago")
    assert boot(root, fail=True, strike_window=3600.0) == HIT
    assert boot(root, fail=True) == HIT  # the two recent strikes are this one and the last
    assert boot(root) == BUILD and len(entries(Roots.at(root))) == 2


def test_a_target_sets_how_many_strikes_quarantine(tmp_path):
    root = tmp_path / "root"
    target = write_target(tmp_path / "cachekeeper.toml", TARGET + "strikes = 1\n")
    boot(root, target=target)
    assert boot(root, fail=True, target=target) == HIT
    assert boot(root, target=target) == BUILD and len(entries(Roots.at(root))) == 1
    bad = write_target(tmp_path / "bad.toml", TARGET + 'strikes = "many"\n')
    assert invoke("--root", str(root), "check", "--target", str(bad)).code == 2


def test_the_weights_are_never_struck(tmp_path):
    from .helpers import make_hf_model

    root = tmp_path / "root"
    make_hf_model(root / "weights", "org/model", {"config.json": b"{}"})
    for fail in (False, True, True, True):
        with pytest.raises(RuntimeError) if fail else _nothing():
            with cachekeeper.activate(root, model="org/model", layers=["weights"]):
                if fail:
                    raise RuntimeError("boom")
    assert not (root / ".cachekeeper" / "strikes").exists() or not any((root / ".cachekeeper" / "strikes").iterdir())


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# --- races ---------------------------------------------------------------------------------------


def test_two_boots_that_quarantine_at_once_move_it_once(tmp_path):
    """Both see two strikes: one holds the lease and moves the artifact; the other finds the lease
    taken (and boots privately) or the artifact gone (and builds or waits for the build)."""
    root = tmp_path / "root"
    boot(root)
    boot(root, fail=True)
    boot(root, fail=True)
    barrier, statuses, errors = threading.Barrier(2), [], []

    def race() -> None:
        try:
            barrier.wait()
            with cachekeeper.activate(root, layers=["compile"], wait_timeout=30) as ck:
                use = ck.layers["compile"]
                statuses.append(use.status)
                if use.status in (BUILD, PRIVATE):
                    (use.path / "inductor" / "kernel.so").write_bytes(b"compiled again")
                time.sleep(0.3)
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=race) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    uses.release_all()
    assert not errors and BUILD in statuses and set(statuses) <= {BUILD, HIT, PRIVATE}, statuses
    assert len(entries(Roots.at(root))) == 1  # moved once
    assert read_sidecar(Root(root), "compile", only_key(root)) is not None
    assert boot(root) == HIT


# --- what people see and do: ls, check, inspect, unquarantine, prune --quarantined ---------------


@pytest.fixture
def quarantined(tmp_path, monkeypatch):
    """A root whose artifact was quarantined and whose key nothing rebuilt since (the boot that
    quarantined it failed too)."""
    monkeypatch.chdir(tmp_path)
    write_target(tmp_path / "cachekeeper.toml", TARGET)
    root = tmp_path / "root"
    boot(root)
    key = only_key(root)
    boot(root, fail=True)
    boot(root, fail=True)
    assert boot(root, fail=True) == BUILD  # quarantined it, built, and failed: nothing published
    assert not (root / "compile" / key).exists()
    return root, key


def test_a_quarantined_artifact_is_cold_in_check_and_shown_by_ls_and_inspect(quarantined):
    root, key = quarantined
    checked = invoke("--root", str(root), "check", "--json")
    assert checked.code == 1
    [row] = json.loads(checked.out)["layers"]
    assert row["status"] == "cold" and row["key"] == key
    assert "quarantined" in row["reason"] and "2 failed boot(s)" in row["reason"]
    assert "illegal memory access" in row["reason"]
    text = invoke("--root", str(root), "check")
    assert f"cachekeeper unquarantine {key}" in text.out
    listed = json.loads(invoke("--root", str(root), "ls", "--json").out)
    assert listed["artifacts"] == [] and [each["key"] for each in listed["quarantined"]] == [key]
    assert "1 quarantined" in invoke("--root", str(root), "ls").out
    inspected = json.loads(invoke("--root", str(root), "inspect", key, "--json").out)
    assert inspected["state"] == "quarantined" and "quarantine" in inspected["path"]
    assert len(inspected["quarantined"]) == 1 and inspected["inductor"]  # its caches can be looked into


def test_unquarantine_moves_it_back_and_publishes_it_again(quarantined):
    root, key = quarantined
    restored = invoke("--root", str(root), "unquarantine", key, "--json")
    assert restored.code == 0, restored
    sidecar = read_sidecar(Root(root), "compile", key)
    assert sidecar is not None and (root / "compile" / key / "inductor" / "kernel.so").is_file()
    assert not entries(Roots.at(root)) and tally(root) == strikes.Tally()
    assert json.loads(invoke("--root", str(root), "check", "--json").out)["ready"] is True
    assert json.loads(invoke("--root", str(root), "ls", "--json").out)["quarantined"] == []
    assert boot(root) == HIT
    again = invoke("--root", str(root), "unquarantine", key)
    assert again.code == 2 and "is not quarantined" in again.err


def test_unquarantine_is_refused_when_a_newer_artifact_took_the_key(quarantined):
    root, key = quarantined
    assert boot(root) == BUILD
    before = {part: snapshot(root / part) for part in ("compile", ".cachekeeper/quarantine", ".cachekeeper/sidecars")}
    refused = invoke("--root", str(root), "unquarantine", key)
    assert refused.code == 1 and "a newer artifact took the key" in refused.err
    refused.assert_one_line_error()
    assert {part: snapshot(root / part) for part in before} == before


def test_prune_quarantined_removes_them_and_says_what_it_freed(quarantined):
    root, key = quarantined
    [entry] = entries(Roots.at(root))
    planned = json.loads(invoke("--root", str(root), "prune", "--quarantined", "--dry-run", "--json").out)
    assert planned["dry_run"] and [each["name"] for each in planned["removed"]] == [entry.name]
    kept = json.loads(invoke("--root", str(root), "prune", "--quarantined", "--older-than", "1d", "--json").out)
    assert kept["removed"] == [] and entries(Roots.at(root))
    done = invoke("--root", str(root), "prune", "--quarantined", "--yes", "--json")
    assert done.code == 0 and [each["key"] for each in json.loads(done.out)["removed"]] == [key]
    assert not entries(Roots.at(root)) and not any((root / ".cachekeeper" / "quarantine" / "compile").iterdir())
    assert json.loads(invoke("--root", str(root), "ls", "--json").out)["quarantined"] == []
    mixed = invoke("--root", str(root), "prune", "--quarantined", "--max-size", "1GB")
    mixed.assert_usage_error()


def test_an_artifact_built_again_after_a_prune_starts_without_the_old_strikes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "root"
    boot(root)
    key = only_key(root)
    assert boot(root, fail=True) == HIT and len(tally(root).strikes) == 1
    pruned = invoke("--root", str(root), "prune", "--key", key, "--yes")
    assert pruned.code == 0 and not (root / "compile" / key).exists(), pruned
    assert boot(root) == BUILD and tally(root) == strikes.Tally()
    assert boot(root, fail=True) == HIT and boot(root) == HIT  # one strike is not two


@pytest.mark.parametrize(
    "name",
    ["../../outside", "compile-0123456789abcdef--1796000000000-abcdef01", "not-a-quarantined-name"],
    ids=["escapes", "another-key", "no-stamp"],
)
def test_a_quarantine_record_whose_name_no_path_may_be_made_of_is_refused(name):
    from cachekeeper.quarantine import Quarantined

    key = "compile-fedcba9876543210"
    record = {"format": 1, "layer": "compile", "key": key, "name": name, "at": 1.0, "host": "h:1", "reasons": []}
    with pytest.raises(ValueError):
        Quarantined.from_json(record)
    good = dict(record, name=f"{key}--1796000000000-abcdef01")
    assert Quarantined.from_json(good).name == good["name"]
