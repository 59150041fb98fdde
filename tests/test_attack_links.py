"""Attack: links below the checked level were followed. A linked ``manifest.db``, a linked
directory inside an artifact (verify said "ok", the cache variables pointed outside), a dangling
link inside an artifact (``activate()`` crashed), ``inspect`` printing a file outside the root
through a linked ``cache_key_factors.json``; and between the check of a path and its removal, a
directory swapped for a link. Removals now walk by directory descriptor from the root and reads
of cachekeeper's own files refuse links: whatever is planted, the sentinel outside stays whole.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

import cachekeeper
from cachekeeper import strikes, uses
from cachekeeper.manifest import Manifest, default_url
from cachekeeper.prune import PrunePolicy, execute_prune, plan_prune
from cachekeeper.runtime import BUILD, HIT, PRIVATE
from cachekeeper.store import Root, Roots

from .adversary import at_lines, invoke, snapshot
from .helpers import put


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    sentinel = tmp_path / "outside"
    (sentinel / "vllm").mkdir(parents=True)
    (sentinel / "vllm" / "precious").write_text("not cachekeeper's")
    (sentinel / "secret.json").write_text(json.dumps({"password": "hunter2-outside"}))
    return sentinel


def _boot(root: Path, **options) -> tuple[str, str]:
    with cachekeeper.activate(root, layers=["compile"], **options) as ck:
        use = ck.layers["compile"]
        if use.status == BUILD:
            (use.path / "inductor" / "kernel").write_text("compiled")
        variables = os.environ["VLLM_CACHE_ROOT"]
    uses.release_all()
    return use.status, variables


@pytest.mark.parametrize("dangling", [False, True], ids=["to-outside", "dangling"])
def test_a_link_inside_an_artifact_makes_the_boot_cold_and_verify_say_so(root, outside, dangling):
    status, _ = _boot(root)
    assert status == BUILD
    [artifact] = (root / "compile").iterdir()
    shutil.rmtree(artifact / "vllm")
    (artifact / "vllm").symlink_to(outside / "nowhere" if dangling else outside / "vllm")
    before = snapshot(outside)
    status, variables = _boot(root)
    assert status == PRIVATE and not variables.startswith(str(root)) and not variables.startswith(str(outside))
    report = json.loads(invoke("--root", str(root), "verify", "--json").out)
    assert not report["ok"] and report["findings"][0]["files"] == ["vllm"]
    assert snapshot(outside) == before


def test_a_linked_manifest_is_refused_by_every_command(root, outside, tmp_path):
    _boot(root)
    database = root / ".cachekeeper" / "manifest.db"
    invoke("--root", str(root), "sync")
    shutil.move(database, outside / "manifest.db")
    database.symlink_to(outside / "manifest.db")
    before = snapshot(outside)
    target = tmp_path / "cachekeeper.toml"
    target.write_text('[target]\ngpu = "cpu"\n')
    for command in (("ls",), ("check", "--target", str(target)), ("prune", "--older-than", "0s", "--yes"), ("sync",)):
        outcome = invoke("--root", str(root), *command)
        assert outcome.code in (1, 2) and "symbolic link" in outcome.err, (command, outcome)
    assert snapshot(outside) == before


def test_inspect_never_prints_a_file_outside_through_a_linked_factors_file(root, outside):
    _boot(root)
    [artifact] = (root / "compile").iterdir()
    backbone = artifact / "vllm" / "torch_compile_cache" / "abcdef0123" / "rank_0_0" / "backbone"
    backbone.mkdir(parents=True)
    (backbone / "cache_key_factors.json").symlink_to(outside / "secret.json")
    outcome = invoke("--root", str(root), "inspect", artifact.name, "--json")
    assert outcome.code == 0, outcome.err
    assert "hunter2-outside" not in outcome.out
    [found] = json.loads(outcome.out)["vllm"]
    assert found["factors"] is None


def _prune(root: Path) -> None:
    roots = Roots.at(root)
    manifest = Manifest.open(default_url(roots))
    try:
        execute_prune(plan_prune(manifest, roots, PrunePolicy.of(older_than=0)), manifest, roots)
    except cachekeeper.CachekeeperError:
        pass  # refused in words: fine, as long as nothing outside is touched
    finally:
        manifest.engine.dispose()


@pytest.mark.slow
def test_a_layer_directory_swapped_for_a_link_in_the_middle_of_a_prune_is_never_followed(root, outside, tmp_path):
    """At every line of the removal itself, another process swaps the layer directory for a link
    to a tree that looks the same (the artifacts' names, their files)."""
    manifest = Manifest.open(default_url(Roots.at(root)))
    keys = [put(root, manifest, f"compile-a-{index:016x}", age_days=30).key for index in range(3)]
    manifest.engine.dispose()
    decoy = outside / "decoy"
    for key in keys:
        (decoy / key).mkdir(parents=True)
        (decoy / key / "data").write_text("someone else's")
    before = snapshot(outside)
    probe = tmp_path / "probe"
    shutil.copytree(root, probe, symlinks=True)
    lines: list[str] = []
    with at_lines({}, lines):
        _prune(probe)
    assert not any((probe / "compile" / key).exists() for key in keys)  # the plain run removes them
    removal = [n + 1 for n, line in enumerate(lines) if line.startswith("store/descriptors.py")]
    assert len(removal) > 10
    for point in removal:
        run = tmp_path / f"run-{point}"
        shutil.copytree(root, run, symlinks=True)

        def swap(run: Path = run) -> None:
            if not (run / "compile").is_symlink():
                shutil.rmtree(run / "compile")
                (run / "compile").symlink_to(decoy)

        with at_lines({point: swap}):
            _prune(run)
        assert snapshot(outside) == before, f"swapped at {lines[point - 1]}"


def test_a_hit_serves_only_a_real_directory(root, outside):
    assert _boot(root)[0] == BUILD
    assert _boot(root)[0] == HIT
    [artifact] = (root / "compile").iterdir()
    real = root / "stash"
    shutil.move(artifact, real)
    artifact.symlink_to(real)
    assert _boot(root)[0] == PRIVATE


def test_tidying_strikes_never_removes_a_directory_through_a_linked_layer(root, outside):
    assert _boot(root)[0] == BUILD
    assert _boot(root)[0] == HIT  # leaves the key's strikes directory, empty, for the next attempt
    [key] = os.listdir(root / "compile")
    layer_dir = root / ".cachekeeper" / "strikes" / "compile"
    assert not any((layer_dir / key).iterdir())
    (outside / key).mkdir()  # an empty directory of the same name, elsewhere
    shutil.rmtree(layer_dir)
    layer_dir.symlink_to(outside)
    strikes.tidy(Root(root), "compile", key)
    assert (outside / key).is_dir()
    layer_dir.unlink()
    (layer_dir / key).mkdir(parents=True)
    strikes.tidy(Root(root), "compile", key)
    assert not (layer_dir / key).exists()
