"""The real ``cachekeeper`` command, run as a subprocess: outputs, exit codes, and bad input."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from cachekeeper.keys import parse_key
from cachekeeper.manifest import Manifest, default_url
from cachekeeper.store import Root, Roots

from .helpers import TORCH, run_cli, tree


@pytest.fixture
def project(tmp_path: Path, root: Path) -> Path:
    """A directory with a cachekeeper.toml, run from which the CLI finds its target."""
    (tmp_path / "cachekeeper.toml").write_text(
        f'[target]\ngpu = "cpu"\n[target.packages]\ntorch = "{TORCH}"\n[target.engine]\nwidth = 8\n'
    )
    return tmp_path


def cli(project: Path, root: Path, *args: str):
    return run_cli("--root", str(root), *args, cwd=project)


def test_fingerprint_json_has_facts_and_keys(project, root):
    result = cli(project, root, "fingerprint", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["facts"]["gpu.arch"] == "none" and data["facts"]["engine.width"] == 8
    assert data["sources"]["engine.width"] == "declared" and data["sources"]["python"] == "observed"
    assert set(data["keys"]) == {"weights", "compile", "snapshot"}
    for layer, key in data["keys"].items():
        assert parse_key(key)[0] == layer
    assert data["mismatches"] == []


@pytest.mark.slow
def test_run_publishes_only_on_success_and_passes_the_exit_code_on(project, root):
    failed = cli(project, root, "run", "--", sys.executable, "-c", "import sys; sys.exit(3)")
    assert failed.returncode == 3
    assert json.loads(cli(project, root, "ls", "--json").stdout)["artifacts"] == []
    script = "import os; open(os.path.join(os.environ['TORCHINDUCTOR_CACHE_DIR'], 'k'), 'w').write('x' * 7)"
    ok = cli(project, root, "run", "--json", "--", sys.executable, "-c", script)
    assert ok.returncode == 0, ok.stderr
    summary = json.loads(ok.stdout.strip().splitlines()[-1])
    assert summary["published"] and summary["layers"][0]["status"] == "build"
    [artifact] = json.loads(cli(project, root, "ls", "--json").stdout)["artifacts"]
    assert artifact["key"] == summary["layers"][0]["key"]
    assert (artifact["layer"], artifact["status"], artifact["bytes"], artifact["files"]) == (
        "compile",
        "published",
        7,
        1,
    )
    again = cli(project, root, "run", "--json", "--", sys.executable, "-c", "pass")
    assert json.loads(again.stdout.strip().splitlines()[-1])["layers"][0]["status"] == "hit"


@pytest.mark.slow
def test_check_exits_by_readiness_and_explains_staleness(project, root):
    cold = cli(project, root, "check", "--json")
    assert cold.returncode == 1
    data = json.loads(cold.stdout)
    assert data["ready"] is False and [(layer["layer"], layer["status"]) for layer in data["layers"]] == [
        ("compile", "cold")
    ]
    assert cli(project, root, "run", "--", sys.executable, "-c", "pass").returncode == 0
    warm = cli(project, root, "check", "--json")
    assert warm.returncode == 0 and json.loads(warm.stdout)["layers"][0]["status"] == "warm"
    (project / "next.toml").write_text(
        f'[target]\ngpu = "cpu"\n[target.packages]\ntorch = "{TORCH}"\n[target.engine]\nwidth = 16\n'
    )
    stale = cli(project, root, "check", "--target", "next.toml", "--json")
    layer = json.loads(stale.stdout)["layers"][0]
    assert stale.returncode == 1 and layer["status"] == "stale"
    assert layer["changes"] == [{"fact": "engine.width", "old": 8, "new": 16}]
    explained = cli(project, root, "explain", layer["nearest"], layer["key"], "--target", "next.toml")
    assert explained.returncode == 0 and explained.stdout.strip() == "engine.width: 8 → 16"
    human = cli(project, root, "check", "--target", "next.toml")
    assert "engine.width: 8 → 16" in human.stdout and "not ready" in human.stdout


@pytest.mark.slow
def test_prune_dry_run_lists_and_keeps_then_prune_removes(project, root):
    assert cli(project, root, "run", "--", sys.executable, "-c", "pass").returncode == 0
    assert json.loads(cli(project, root, "prune", "--older-than", "7d", "--json").stdout)["removed"] == []
    before = tree(root)
    preview = cli(project, root, "prune", "--older-than", "0s", "--dry-run", "--json")
    assert preview.returncode == 0
    [removed] = json.loads(preview.stdout)["removed"]
    assert set(removed) == {"key", "layer", "model", "bytes"} and removed["layer"] == "compile"
    assert tree(root) == before
    done = json.loads(cli(project, root, "prune", "--older-than", "0s", "--json").stdout)
    assert done["removed"] == [removed] and done["dry_run"] is False
    assert not (root / "compile" / removed["key"]).exists()
    assert json.loads(cli(project, root, "ls", "--json").stdout)["artifacts"] == []


def test_db_commands(project, root):
    current = json.loads(cli(project, root, "db", "current", "--json").stdout)
    assert current["current"] is None and current["up_to_date"] is False
    upgraded = json.loads(cli(project, root, "db", "upgrade", "--json").stdout)
    assert upgraded["from"] is None and upgraded["to"] == current["head"]
    assert json.loads(cli(project, root, "db", "current", "--json").stdout)["up_to_date"] is True


BAD_INPUT = [
    ("fingerprint", "--target", "missing.toml"),
    ("fingerprint", "--target", "malformed.toml"),
    ("check", "--target", "unknown-gpu.toml"),
    ("check", "--target", "malformed.toml"),
    ("check", "--target", "missing.toml"),
    ("run",),
    ("run", "--", "/no/such/command"),
    ("run", "--busy", "sometimes", "--", "true"),
    ("ls", "--bogus"),
    ("ls", "--layer"),
    ("explain",),
    ("explain", "not-a-key", "compile-a-0123456789abcdef"),
    ("explain", "compile-a-0123456789abcdef", "compile-b-fedcba9876543210"),
    ("prune",),
    ("prune", "--older-than", "7x"),
    ("prune", "--older-than", "-3d"),
    ("prune", "--older-than", ""),
    ("--db", "nonsense", "ls"),
    pytest.param(("--db", "postgresql+psycopg://nobody@127.0.0.1:1/none", "ls"), marks=pytest.mark.slow),
    ("--db", "nonsense", "db", "upgrade"),
    ("db",),
    ("db", "downgrade"),
    ("no-such-command",),
]


@pytest.fixture(scope="module")
def populated(tmp_path_factory) -> Path:
    """A project whose root holds one published artifact, made once for the bad-input cases."""
    project = tmp_path_factory.mktemp("populated")
    (project / "cachekeeper.toml").write_text(f'[target]\ngpu = "cpu"\n[target.packages]\ntorch = "{TORCH}"\n')
    (project / "malformed.toml").write_text("[target\n")
    (project / "unknown-gpu.toml").write_text('[target]\ngpu = "H101"\n')
    env = {"HF_HUB_OFFLINE": "1"}
    assert (
        run_cli(
            "--root", str(project / "root"), "run", "--", sys.executable, "-c", "pass", cwd=project, env=env
        ).returncode
        == 0
    )
    run_cli("--root", str(project / "root"), "ls", cwd=project, env=env)
    return project


@pytest.mark.parametrize("args", BAD_INPUT, ids=" ".join)
def test_bad_input_exits_2_with_one_line_and_deletes_nothing(populated, tmp_path, args):
    project = tmp_path / "project"
    shutil.copytree(populated, project, symlinks=True)
    root = project / "root"
    before = tree(root)
    result = cli(project, root, *args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert tree(root) == before


def test_a_usage_error_message_says_where_to_look(project, root):
    result = cli(project, root, "prune", "--older-than", "7x")
    assert (
        result.stderr.strip()
        == "error: invalid duration '7x': use a number and a unit s, m, h, d or w, such as 90m, 12h, 7d"
    )


def test_help_reads_well(project, root):
    result = cli(project, root, "--help")
    assert result.returncode == 0
    for command in ("fingerprint", "run", "check", "ls", "explain", "prune", "sync", "db"):
        assert command in result.stdout
    assert "--older-than" in cli(project, root, "prune", "--help").stdout


def test_json_output_is_one_sorted_line_when_piped_and_keeps_integers_beyond_64_bits(capsys):
    from cachekeeper.cli.render import print_json

    print_json({"b": [1, 2], "a": {"path": Path("/cache")}})
    print_json({"engine.seed": 2**70})
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == '{"a":{"path":"/cache"},"b":[1,2]}'
    assert json.loads(lines[1]) == {"engine.seed": 2**70}


def test_ls_of_many_rows_stops_quietly_when_its_reader_does(project, root):
    manifest = Manifest.open(default_url(Roots.at(root)))
    rows = [
        (
            f"compile-cpu-{n:016x}",
            "compile",
            "org/m",
            f"compile/compile-cpu-{n:016x}",
            "published",
            1,
            1,
            n,
            n,
            "b",
            "{}",
        )
        for n in range(20_000)
    ]
    with sqlite3.connect(Root(root).manifest_path) as connection:
        connection.executemany(
            "INSERT INTO artifact (key, layer, model, relpath, state, bytes, files, created_at, last_used_at, "
            "builder, facts, depends_on) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, '[]')",
            rows,
        )
    manifest.engine.dispose()
    process = subprocess.Popen(
        [sys.executable, "-m", "cachekeeper", "--root", str(root), "ls"],
        cwd=project,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    header, first = process.stdout.readline(), process.stdout.readline()
    process.stdout.close()  # as `cachekeeper ls | head -2` does
    assert process.wait(timeout=60) == 0 and process.stderr.read() == b""
    assert header.split() == [b"last", b"used", b"size", b"files", b"model", b"key"]
    assert first.split()[-1] == b"compile-cpu-0000000000004e1f"  # the most recently used
