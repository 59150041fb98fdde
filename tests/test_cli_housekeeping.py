"""The housekeeping commands through ``cachekeeper.cli.main``, in this process (a subprocess per
command would cost a second each), and doctor's acceptance as a real subprocess: ``ls --json``
lists the same artifacts after the manifest was deleted."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from cachekeeper import cli as cachekeeper_cli
from cachekeeper import uses

from .helpers import TORCH, exited_process, run_cli, tree

WRITE = "import os; open(os.path.join(os.environ['TORCHINDUCTOR_CACHE_DIR'], 'k'), 'w').write('x' * {n})"


def target(path: Path, width: int) -> Path:
    path.write_text(f'[target]\ngpu = "cpu"\n[target.packages]\ntorch = "{TORCH}"\n[target.engine]\nwidth = {width}\n')
    return path


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def cli(capsys, monkeypatch):
    def invoke(project: Path, root: Path, *args: str) -> Result:
        monkeypatch.chdir(project)
        capsys.readouterr()
        try:
            cachekeeper_cli.main(["--root", str(root), *args])
        except SystemExit as done:
            code = done.code
        out, err = capsys.readouterr()
        return Result(code, out, err)

    return invoke


@pytest.fixture
def cli_json(cli):
    def invoke(project: Path, root: Path, *args: str, code: int = 0):
        result = cli(project, root, *args, "--json")
        assert result.returncode == code, (result.stdout, result.stderr)
        return json.loads(result.stdout)

    return invoke


@pytest.fixture
def project(tmp_path: Path, root: Path, cli) -> Path:
    """Two compile artifacts built by real runs (widths 8 and 16), the first hit once more."""
    for width, size in ((8, 7), (16, 30), (8, 7)):
        t = target(tmp_path / f"w{width}.toml", width)
        assert (
            cli(tmp_path, root, "run", "--target", str(t), "--", sys.executable, "-c", WRITE.format(n=size)).returncode
            == 0
        )
    uses.release_all()  # the runs were in this process, which is not serving anything
    return tmp_path


def real(project: Path, root: Path, *args: str):
    result = run_cli("--root", str(root), *args, "--json", cwd=project)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_doctor_rebuilds_a_deleted_manifest_so_that_ls_lists_the_same(project, root, cli_json):
    [newer, older] = cli_json(project, root, "ls")["artifacts"]
    assert cli_json(project, root, "pin", older["key"])["pinned"] is True
    before = cli_json(project, root, "ls")
    (root / ".cachekeeper" / "manifest.db").unlink()
    report = real(project, root, "doctor")
    assert report["manifest"] == "created" and sorted(report["indexed"]) == sorted([newer["key"], older["key"]])
    assert real(project, root, "ls") == before
    # The pin came back from the journals too: a prune of everything keeps it.
    pruned = cli_json(project, root, "prune", "--older-than", "0s", "--dry-run")
    assert [a["key"] for a in pruned["removed"]] == [newer["key"]] and pruned["reasons"][older["key"]] == ["pinned"]


def test_verify_exits_1_on_damage_and_0_on_growth(project, root, cli, cli_json):
    assert cli_json(project, root, "verify")["ok"] is True
    [artifact, _] = cli_json(project, root, "ls")["artifacts"]
    (Path(artifact["path"]) / "inductor" / "later").write_text("a batch size compiled later")
    grown = cli_json(project, root, "verify")
    assert grown["ok"] and [f["kind"] for f in grown["findings"]] == ["growth"]
    (Path(artifact["path"]) / "inductor" / "k").write_text(
        "y" * len((Path(artifact["path"]) / "inductor" / "k").read_text())
    )
    damaged = cli_json(project, root, "verify", code=1)
    assert [(f["kind"], f["key"], f["files"]) for f in damaged["findings"] if f["problem"]] == [
        ("corrupt", artifact["key"], ["inductor/k"])
    ]
    human = cli(project, root, "verify")
    assert human.returncode == 1 and "problems found" in human.stdout


def test_prune_stale_keep_last_and_max_size_from_the_command_line(project, root, cli, cli_json):
    w8, w16 = project / "w8.toml", project / "w16.toml"
    keys = {a["bytes"]: a["key"] for a in cli_json(project, root, "ls")["artifacts"]}
    stale = cli_json(project, root, "prune", "--stale", "--target", str(w8), "--dry-run")
    assert [a["key"] for a in stale["removed"]] == [keys[30]]
    assert stale["reasons"][keys[30]] == ["stale: no target derives this key"]
    both = cli_json(project, root, "prune", "--stale", "--target", str(w8), "--target", str(w16), "--dry-run")
    assert both["removed"] == []
    budget = cli_json(project, root, "prune", "--max-size", "10B", "--dry-run")
    assert [a["key"] for a in budget["removed"]] == [keys[30]] and budget["bytes"] == 30  # the older one goes
    before = tree(root)
    assert cli_json(project, root, "prune", "--keep-last", "1", "--dry-run")["removed"] == budget["removed"]
    assert tree(root) == before
    done = cli_json(project, root, "prune", "--keep-last", "1", "--yes")
    assert [a["key"] for a in done["removed"]] == [keys[30]] and not (root / "compile" / keys[30]).exists()
    assert cli_json(project, root, "stats")["layers"][0]["pruned_bytes"] == 30


def test_inspect_stats_and_weights_speak_json(project, root, cli, cli_json):
    [newer, _] = cli_json(project, root, "ls")["artifacts"]
    inspected = cli_json(project, root, "inspect", newer["key"])
    assert inspected["key"] == newer["key"] and inspected["inductor"][0]["path"] == "inductor"
    assert inspected["checksum"] and inspected["depends_on"] == []
    stats = cli_json(project, root, "stats", "--since", "1h")
    [row] = stats["layers"]
    assert (row["hits"], row["builds"], row["stored"]) == (1, 2, 2)
    assert cli_json(project, root, "weights") == {"revisions": []}


@pytest.mark.parametrize(
    "args",
    [
        ("pin", "compile-x-00000000000000ff"),
        ("pin", "not-a-key"),
        ("unpin",),
        ("inspect", "compile-x-00000000000000ff"),
        ("prune", "--max-size", "lots"),
        ("prune", "--keep-last", "-1"),
        ("prune", "--stale"),
        ("prune", "--older-than", "1d", "--target", "missing.toml"),
        ("stats", "--since", "forever"),
        ("verify", "--bogus"),
    ],
    ids=" ".join,
)
def test_bad_housekeeping_input_exits_2_with_one_line(tmp_path, root, cli, args):
    result = cli(tmp_path, root, *args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("error: ")


def test_ls_prints_aligned_rows_newest_first_and_limit_keeps_the_newest(project, root, cli, cli_json):
    listed = cli_json(project, root, "ls")["artifacts"]
    text = cli(project, root, "ls")
    assert text.returncode == 0, text.stderr
    header, *rows, total = text.stdout.splitlines()[:4]
    assert header.split() == ["last", "used", "size", "files", "model", "key"]
    assert [row.split()[-1] for row in rows] == [a["key"] for a in listed]
    assert len({row.index(row.split()[-1]) for row in rows} | {header.index("key")}) == 1  # one column
    assert total == "2 artifact(s), 37 B, 2 file(s)"
    [newest] = cli_json(project, root, "ls", "--limit", "1")["artifacts"]
    assert newest == listed[0]
    limited = cli(project, root, "ls", "--limit", "1").stdout.splitlines()
    assert limited[1].endswith(listed[0]["key"]) and limited[2] == "1 artifact(s) (--limit), 7 B, 1 file(s)"
    assert "compile: 2 artifact(s), 37 B, 2 file(s)" in limited  # the layer's totals, whatever the limit


def test_sync_and_prune_tidy_and_say_what_they_removed(project, root, cli, cli_json):
    stale = root / ".cachekeeper" / "uses" / "compile" / "compile-x-00000000000000ff" / "other-1.json"
    stale.parent.mkdir(parents=True)
    stale.write_text(json.dumps({"owner": "other:1", "since": 1.0, "process": str(exited_process())}))
    report = cli_json(project, root, "sync", "--keep-events", "30d")
    assert report["tidied"]["uses_forgotten"] == 1 and not stale.parent.exists()
    assert report["tidied"]["summarised_before"] < time.time() - 30 * 86400
    stale.parent.mkdir(parents=True)
    stale.write_text(json.dumps({"owner": "other:1", "since": 1.0, "process": str(exited_process())}))
    assert "tidied" not in cli_json(project, root, "prune", "--older-than", "1d", "--dry-run")
    assert stale.exists()  # a dry run changes nothing
    assert cli_json(project, root, "prune", "--older-than", "1d", "--yes")["tidied"]["uses_forgotten"] == 1
    assert not stale.exists()
    assert "daily counts" in cli(project, root, "stats", "--help").stdout
