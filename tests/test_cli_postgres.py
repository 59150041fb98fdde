"""The ``cachekeeper`` command against a PostgreSQL manifest, and every way its URL can be wrong."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from cachekeeper import journal
from cachekeeper.cli import main
from cachekeeper.manifest import Manifest
from cachekeeper.records import Kind, Record
from cachekeeper.store import Root, Roots, publish, unpublish
from cachekeeper.sync import sync

from .helpers import TORCH, artifact, facts, run_cli
from .postgres import free_port


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "cachekeeper.toml").write_text(f'[target]\ngpu = "cpu"\n[target.packages]\ntorch = "{TORCH}"\n')
    return tmp_path


def test_the_main_commands_on_a_postgresql_manifest(project, root, postgresql_url):
    def cli(*args: str, **env: str):
        result = run_cli("--root", str(root), *args, cwd=project, env=env)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout) if "--json" in args else result

    head = Manifest.connect(postgresql_url).head()
    assert cli("--db", postgresql_url, "db", "upgrade", "--json") == {"from": None, "to": head}
    cli("run", "--", sys.executable, "-c", "pass")  # a container: it writes its journal, no database
    [artifact] = cli("ls", "--json", CACHEKEEPER_DB=postgresql_url)["artifacts"]
    assert artifact["layer"] == "compile" and artifact["status"] == "published"
    assert cli("--db", postgresql_url, "check", "--json")["layers"][0]["status"] == "warm"
    pruned = cli("prune", "--older-than", "0s", "--json", CACHEKEEPER_DB=postgresql_url)
    assert [removed["key"] for removed in pruned["removed"]] == [artifact["key"]]
    assert cli("--db", postgresql_url, "db", "current", "--json") == {"current": head, "head": head, "up_to_date": True}
    assert Manifest.open(postgresql_url).artifacts(state=None) == []
    assert not (root / ".cachekeeper" / "manifest.db").exists()  # the default SQLite file never came into it


SECRET = "hunter2-never-shown"


def _bad_urls(server) -> dict[str, tuple[str, str]]:
    """What a user can get wrong, with the words the one-line message must contain."""
    good = make_url(server.url("postgres"))
    return {
        "unknown host": (server.url("postgres").replace("127.0.0.1", "-no-such-host"), "failed to resolve host"),
        "refused port": (server.url("postgres", port=free_port()), "Connection refused"),
        "wrong password": (server.url("postgres", password=SECRET), "password authentication failed"),
        "unknown database": (server.url("no_such_database"), 'database "no_such_database" does not exist'),
        "missing driver": (
            good.set(drivername="postgresql+pg8000").render_as_string(hide_password=False),
            "driver pg8000 is not installed",
        ),
        "malformed port": (f"postgresql+psycopg://cachekeeper:{SECRET}@127.0.0.1:54x2/db", "invalid database URL"),
        "unsupported scheme": (f"mysql://cachekeeper:{SECRET}@127.0.0.1/db", "unsupported database URL"),
        "not a URL": ("cachekeeper.db", "invalid database URL"),
    }


@pytest.mark.parametrize("command", [("db", "current"), ("db", "upgrade"), ("ls",)], ids=" ".join)
def test_a_wrong_database_url_is_one_line_and_exit_2(project, root, postgres_server, command, capsys, monkeypatch):
    """The command's own entry point, in this process: a subprocess per case would cost seconds."""
    monkeypatch.chdir(project)
    for problem, (url, words) in _bad_urls(postgres_server).items():
        with pytest.raises(SystemExit) as exited:
            main(["--root", str(root), "--db", url, *command])
        out, err = capsys.readouterr()
        assert exited.value.code == 2, (problem, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], (problem, err)
        assert SECRET not in err + out and postgres_server.password not in err + out


def test_a_wrong_password_from_the_environment_is_one_line_and_exit_2(project, root, postgres_server):
    url, words = _bad_urls(postgres_server)["wrong password"]
    result = run_cli("--root", str(root), "db", "current", cwd=project, env={"CACHEKEEPER_DB": url})
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and words in result.stderr and SECRET not in result.stderr


def test_moving_from_sqlite_to_postgresql_as_the_readme_says(project, root, sqlite_url, postgresql_url):
    sqlite = Manifest.open(sqlite_url)
    writer = journal.Journal(Root(root))
    writer.append(Record.new(Kind.OBSERVED, facts=facts(), host="h:1"))
    for key in ("compile-a-00000000000000aa", "compile-b-00000000000000bb"):
        publish(Root(root), artifact(key))
        writer.append(Record.new(Kind.PUBLISHED, layer="compile", key=key, model="org/m", seconds=3.0))
    writer.append(Record.new(Kind.HIT, layer="compile", key="compile-a-00000000000000aa", seconds=0.1))
    writer.close()
    sync(sqlite, Roots.at(root))
    unpublish(Root(root), "compile", "compile-b-00000000000000bb")  # pruned since: gone for good
    sqlite.forget("compile-b-00000000000000bb")
    folded = root / ".cachekeeper" / "journal" / "folded"
    for path in folded.glob("*.jsonl"):  # mv ROOT/.cachekeeper/journal/folded/*.jsonl ROOT/.cachekeeper/journal/
        path.rename(folded.parent / path.name)
    result = run_cli("--root", str(root), "sync", "--json", cwd=project, env={"CACHEKEEPER_DB": postgresql_url})
    assert result.returncode == 0, result.stderr
    postgres = Manifest.open(postgresql_url)
    assert postgres.artifacts() == sqlite.artifacts() and len(postgres.artifacts()) == 1
    # The same fingerprint, seen as often, from the same host; when it was seen is each folder's clock.
    moved, kept = postgres.latest_observation("H100"), sqlite.latest_observation("H100")
    assert kept is not None and moved is not None
    assert (moved.facts, moved.gpu_type, moved.host, moved.seen) == (kept.facts, kept.gpu_type, kept.host, kept.seen)
