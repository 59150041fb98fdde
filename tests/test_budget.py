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


def test_ls_and_stats_count_files_per_artifact_layer_and_root(root, tmp_path):
    keys = [_boot(root, 30), _boot(root, 20, width=8)]
    with cachekeeper.activate(root, layers=["snapshot"]) as ck:
        (ck.layers["snapshot"].path / "image").write_text("s")
    uses.release_all()
    listed = json.loads(invoke("--root", str(root), "ls", "--json").out)
    assert sorted((a["key"], a["files"]) for a in listed["artifacts"] if a["layer"] == "compile") == sorted(
        zip(keys, (30, 20), strict=True)
    )
    assert listed["layers"]["compile"] == {"artifacts": 2, "bytes": 50, "files": 50}
    assert listed["layers"]["snapshot"]["files"] == 1
    [held] = listed["roots"]
    assert held["artifact_files"] == 51 and held["budget"] == 50_000
    only = json.loads(invoke("--root", str(root), "ls", "--layer", "snapshot", "--json").out)
    assert list(only["layers"]) == ["snapshot"] and only["roots"] == listed["roots"]  # a root is counted whole
    text = invoke("--root", str(root), "ls").out.splitlines()
    assert text[0].split()[:4] == ["last", "used", "size", "files"]
    assert "3 artifact(s), 51 B, 51 file(s)" in text and "compile: 2 artifact(s), 50 B, 50 file(s)" in text
    assert any(line.startswith(f"{root} holds") and "within its budget of 50,000" in line for line in text)

    target = write_target(tmp_path / "cachekeeper.toml", '[target]\ngpu = "cpu"\n[budget]\nfiles = 45\n')
    report = json.loads(invoke("--root", str(root), "stats", "--json", "--target", str(target)).out)
    compile_rows = [row for row in report["layers"] if row["layer"] == "compile"]
    assert sum(row["stored_files"] for row in compile_rows) == 50
    [held] = report["roots"]
    assert held["budget"] == 45 and held["over_budget"]
    shown = invoke("--root", str(root), "stats", "--target", str(target)).out
    assert "over its budget of 45" in shown


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
