"""File budgets: counts recorded at publish and kept up to date by verify, shown by doctor against
the target's [budget] (or --max-files, or Modal's advised 50,000), never counted by walking."""

from __future__ import annotations

import json

import cachekeeper
from cachekeeper import uses

from .adversary import invoke
from .helpers import write_target


def _boot(root, files: int, **engine) -> str:
    with cachekeeper.activate(root, layers=["compile"], engine=engine) as ck:
        for index in range(files):
            (ck.layers["compile"].path / "inductor" / f"kernel-{index}").write_text("k")
    uses.release_all()
    return str(ck.keys["compile"])


def _doctor(root, *args: str) -> dict:
    outcome = invoke("--root", str(root), "doctor", *args, "--json")
    assert outcome.code == 0, outcome.err
    [files] = json.loads(outcome.out)["files"]
    return files


def test_doctor_counts_recorded_files_and_warns_past_the_budget(root, tmp_path):
    _boot(root, 30)
    _boot(root, 20, width=8)
    counted = _doctor(root)
    assert counted["artifact_files"] == 50 and counted["budget"] == 50_000 and not counted["over_budget"]
    assert counted["state_files"] > 0
    over = _doctor(root, "--max-files", "40")
    assert over["over_budget"] and over["files"] == over["artifact_files"] + over["state_files"]
    text = invoke("--root", str(root), "doctor", "--max-files", "40")
    assert "over its budget of 40" in text.out and "prune --max-files 40" in text.out
    target = write_target(tmp_path / "cachekeeper.toml", '[target]\ngpu = "cpu"\n[budget]\nfiles = 45\n')
    assert _doctor(root, "--target", str(target))["budget"] == 45


def test_verify_brings_a_grown_artifacts_recorded_counts_up_to_date(root):
    key = _boot(root, 3)
    invoke("--root", str(root), "sync")
    (root / "compile" / key / "inductor" / "lazy-batch-size").write_text("compiled later")
    listed = json.loads(invoke("--root", str(root), "ls", "--json").out)["artifacts"]
    assert [a["files"] for a in listed] == [3]
    assert invoke("--root", str(root), "verify").code == 0  # growth is not damage
    listed = json.loads(invoke("--root", str(root), "ls", "--json").out)["artifacts"]
    assert [a["files"] for a in listed] == [4]


def test_a_bad_budget_is_a_usage_error_naming_the_setting(root, tmp_path):
    for value in ("0", "-1", '"many"', "1.5", "true"):
        target = write_target(tmp_path / "cachekeeper.toml", f'[target]\ngpu = "cpu"\n[budget]\nfiles = {value}\n')
        outcome = invoke("--root", str(root), "doctor", "--target", str(target))
        outcome.assert_usage_error()
        assert "[budget] files" in outcome.err
    invoke("--root", str(root), "doctor", "--max-files", "0").assert_usage_error()
