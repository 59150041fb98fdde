"""Attack: weights deleted by commit sha alone. Two repos can hold the same commit sha (a mirror, a
fork); huggingface_hub's ``delete_revisions(sha)`` removes the first repo it finds with it. Pruning
one model must never touch another's files, whatever the order of the scan, and pins, uses and
targets protect weights as they protect every other layer.
"""

from __future__ import annotations

import json

import pytest

import cachekeeper
from cachekeeper import facts as f
from cachekeeper import uses
from cachekeeper.facts import Facts, Source
from cachekeeper.hub import hub_revisions
from cachekeeper.keys import derive_key
from cachekeeper.layers import WEIGHTS, layer_named
from cachekeeper.store import Roots

from .adversary import invoke, snapshot
from .helpers import make_hf_model

SHA = "c" * 40
FILES = {"config.json": b"{}", "model.safetensors": b"w" * 256}


def _repos(root, names):
    for name in names:
        make_hf_model(root / "weights", name, FILES, sha=SHA)
    return {name: snapshot(root / "weights" / ("models--" + name.replace("/", "--"))) for name in names}


def _key(root, model):
    [revision] = [a for a in hub_revisions(Roots.at(root)) if a.model == model]
    return revision.key


def _key_of(model: str) -> str:
    facts = Facts.from_values({f.MODEL: model, f.MODEL_REVISION: SHA}, Source.RESOLVED)
    return str(derive_key(layer_named(WEIGHTS), facts))


@pytest.mark.parametrize("victim", ["org/a", "org/b", "org/z", "mirror/a"])
def test_pruning_one_repo_never_touches_another_with_the_same_sha(root, victim):
    names = ["org/a", "org/b", "org/z", "mirror/a"]
    before = _repos(root, names)
    outcome = invoke("--root", str(root), "prune", "--key", _key(root, victim), "--yes", "--json")
    assert outcome.code == 0, outcome.err
    assert [a["key"] for a in json.loads(outcome.out)["removed"]] == [_key_of(victim)]
    for name in names:
        folder = root / "weights" / ("models--" + name.replace("/", "--"))
        if name == victim:
            assert not (folder / "snapshots" / SHA).exists()
        else:
            assert snapshot(folder) == before[name], f"pruning {victim} changed {name}"


def test_a_pinned_repo_keeps_its_files_when_its_twin_is_pruned(root):
    before = _repos(root, ["org/pinned", "org/other"])
    assert invoke("--root", str(root), "pin", _key_of("org/pinned")).code == 0
    outcome = invoke("--root", str(root), "prune", "--layer", "weights", "--older-than", "0s", "--yes", "--json")
    assert outcome.code == 0, outcome.err
    assert [a["key"] for a in json.loads(outcome.out)["removed"]] == [_key_of("org/other")]
    assert snapshot(root / "weights" / "models--org--pinned") == before["org/pinned"]


def test_weights_in_use_are_kept_while_their_twin_goes(root):
    before = _repos(root, ["org/used", "org/idle"])
    with cachekeeper.activate(root, model="org/used", revision=SHA, layers=["weights"]):
        outcome = invoke("--root", str(root), "prune", "--layer", "weights", "--older-than", "0s", "--yes", "--json")
    uses.release_all()
    assert outcome.code == 0, outcome.err
    assert [a["key"] for a in json.loads(outcome.out)["removed"]] == [_key_of("org/idle")]
    assert snapshot(root / "weights" / "models--org--used") == before["org/used"]


def test_a_target_keeps_its_weights_when_a_twin_is_stale(root, tmp_path):
    before = _repos(root, ["org/deployed", "org/retired"])
    target = tmp_path / "cachekeeper.toml"
    target.write_text(f'[target]\ngpu = "cpu"\nmodel = "org/deployed"\nrevision = "{SHA}"\n')
    outcome = invoke(
        "--root", str(root), "prune", "--stale", "--target", str(target), "--layer", "weights", "--yes", "--json"
    )
    assert outcome.code == 0, outcome.err
    assert [a["key"] for a in json.loads(outcome.out)["removed"]] == [_key_of("org/retired")]
    assert snapshot(root / "weights" / "models--org--deployed") == before["org/deployed"]
