"""Hostile or corrupt state: recorded paths that lead out of the root, links where directories
should be, a damaged manifest, unreadable sidecars, journals, checksums, uses and leases.

Each case damages a copy of one real root (two compile artifacts and a Hub model, published by
real boots), then runs ls, check, verify, sync, prune, doctor and a boot against it. None of them
may crash with a traceback, touch a sentinel tree outside the root, or follow a link out of it;
each reports what it found and goes on, or refuses in one line. Cases then check what each
damage specifically calls for.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
from sqlalchemy import text

import cachekeeper
from cachekeeper import uses
from cachekeeper.errors import CachekeeperError
from cachekeeper.manifest import Manifest, default_url
from cachekeeper.prune import PrunePolicy, execute_prune, plan_prune
from cachekeeper.runtime import BUILD, PRIVATE
from cachekeeper.store import Root, Roots, read_sidecar

from .adversary import invoke, snapshot
from .helpers import make_hf_model

TARGET = '[target]\ngpu = "cpu"\nlayers = ["compile"]\n'
COMMANDS = [("ls",), ("check",), ("verify",), ("sync",), ("prune", "--older-than", "0s", "--yes"), ("doctor",), ("ls",)]


def _boot(root: Path, **options) -> str:
    with cachekeeper.activate(root, **options) as ck:
        for use in ck.layers.values():
            if use.status == BUILD:
                (use.path / "inductor").mkdir(exist_ok=True)
                (use.path / "inductor" / "kernel").write_text(f"compiled for {use.key}")
    uses.release_all()
    return str(ck.keys["compile"])


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> dict:
    """A root with a compile artifact the target derives, an older one, and a Hub model."""
    base = tmp_path_factory.mktemp("hostile")
    root = base / "root"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("HF_HUB_OFFLINE", "1")
        current = _boot(root, layers=["compile"])
        older = _boot(root, layers=["compile"], engine={"width": 8})
        sha = make_hf_model(root / "weights", "org/model", {"config.json": b"{}", "model.safetensors": b"w" * 64})
        with cachekeeper.activate(root, model="org/model", revision=sha, layers=["weights"]) as ck:
            weights = str(ck.keys["weights"])
        uses.release_all()
        assert invoke("--root", str(root), "sync").code == 0
    return {"base": base, "root": root, "current": current, "older": older, "weights": weights, "sha": sha}


@pytest.fixture
def case(template, tmp_path, monkeypatch) -> dict:
    """A fresh copy of the template root, a target, and a sentinel tree outside the root that
    looks like cachekeeper's own files (an artifact, sidecars, a Hub repo)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cachekeeper.toml").write_text(TARGET)
    root = tmp_path / "root"
    shutil.copytree(template["root"], root, symlinks=True)
    outside = tmp_path / "outside"
    for relative, content in {
        "precious": "not cachekeeper's",
        f"compile/{template['current']}/inductor/kernel": "someone else's kernel",
        f"sidecars/compile/{template['current']}.json": "{}",
        f"{template['current']}.json": "{}",
        f"models--org--model/snapshots/{template['sha']}/config.json": "{}",
        f"uses/compile/{template['current']}/host-1.json": "{}",
        f"leases/compile/{template['current']}/1.lease": "{}",
    }.items():
        (outside / relative).parent.mkdir(parents=True, exist_ok=True)
        (outside / relative).write_text(content)
    old = time.time() - 30 * 86400  # everything outside looks long dead, the easiest prey
    for path in outside.rglob("*"):
        os.utime(path, (old, old), follow_symlinks=False)
    return {**template, "root": root, "outside": outside, "before": snapshot(outside)}


def run_everything(case: dict, commands=COMMANDS) -> dict:
    """Every command, then a boot; each must report or refuse, never crash or reach outside."""
    results = {}
    for command in commands:
        outcome = invoke("--root", str(case["root"]), *command)
        assert outcome.code in (0, 1, 2), (command, outcome)
        assert "Traceback" not in outcome.out + outcome.err, (command, outcome)
        assert len(outcome.err.strip().splitlines()) <= 1, (command, outcome.err)
        results[command[0]] = outcome
    try:
        with cachekeeper.activate(case["root"], layers=["compile"]) as ck:
            results["boot"] = ck.layers["compile"].status
    except (CachekeeperError, OSError) as error:  # refused in words: a hostile root is not used
        results["boot"] = error
    finally:
        uses.release_all()
    assert snapshot(case["outside"]) == case["before"], "something outside the root changed"
    return results


def findings(case: dict) -> dict[str | None, list[str]]:
    """verify's findings: key → its kinds and details, as ``kind: detail``."""
    outcome = invoke("--root", str(case["root"]), "verify", "--json")
    found: dict[str | None, list[str]] = {}
    for finding in json.loads(outcome.out)["findings"]:
        found.setdefault(finding["key"], []).append(f"{finding['kind']}: {finding['detail']}")
    return found


def _manifest(root: Path) -> Manifest:
    return Manifest.open(default_url(Roots.at(root)))


def _set_relpath(case: dict, key: str, layer: str, relpath: str) -> None:
    """The same hostile path in the sidecar and in the manifest row."""
    sidecar = Root(case["root"]).sidecar_path(layer, key)
    data = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**data, "relpath": relpath}))
    with _manifest(case["root"]).engine.begin() as connection:
        connection.execute(
            text("update artifact set relpath = :relpath where key = :key"), {"relpath": relpath, "key": key}
        )


def _age(case: dict, days: float = 30) -> None:
    with _manifest(case["root"]).engine.begin() as connection:
        connection.execute(text("update artifact set last_used_at = :at"), {"at": time.time() - days * 86400})


# --- recorded paths that lead elsewhere --------------------------------------------------------

HOSTILE_RELPATHS = {
    "absolute": lambda c: str(c["outside"]),
    "dotdot": lambda c: "../outside",
    "through a link": lambda c: "escape/compile",
    "the whole layer": lambda c: "compile",
    "the state directory": lambda c: ".cachekeeper",
    "another artifact": lambda c: f"compile/{c['current']}",
    "the root itself": lambda c: ".",
    "empty": lambda c: "",
}


@pytest.mark.parametrize("hostile", HOSTILE_RELPATHS, ids=list(HOSTILE_RELPATHS))
def test_a_recorded_path_that_is_not_the_keys_own_directory_is_never_removed(case, hostile):
    root = case["root"]
    (root / "escape").symlink_to(case["outside"])
    _set_relpath(case, case["older"], "compile", HOSTILE_RELPATHS[hostile](case))
    _age(case)
    before = snapshot(root / "compile")
    results = run_everything(case, COMMANDS[:5])
    prune = results["prune"]
    assert f"kept {case['older']}: refusing path" in prune.out and "not the directory the key owns" in prune.out
    assert any("its recorded path is unsafe" in f for f in findings(case)[case["older"]])
    # Only the other compile artifact may go (it is old and unused); the hostile one stays whole.
    after = snapshot(root / "compile")
    assert {k: v for k, v in after.items() if k.startswith(case["older"])} == {
        k: v for k, v in before.items() if k.startswith(case["older"])
    }
    assert (root / ".cachekeeper" / "manifest.db").exists()


def test_a_weights_record_naming_another_models_snapshot_is_never_removed(case):
    root = case["root"]
    other = make_hf_model(root / "weights", "org/other", {"config.json": b"{}"})
    _set_relpath(case, case["weights"], "weights", f"weights/models--org--other/snapshots/{other}")
    _age(case)
    results = run_everything(case, [("prune", "--key", case["weights"], "--yes")])
    assert "not the directory the key owns" in results["prune"].out
    assert (root / "weights" / "models--org--other" / "snapshots" / other / "config.json").exists()


def test_an_artifact_directory_that_is_a_link_is_removed_as_a_link_and_never_used(case):
    root, key = case["root"], case["current"]
    shutil.rmtree(root / "compile" / key)
    (root / "compile" / key).symlink_to(case["outside"] / "compile" / key)
    before_boot = run_everything(case, [("sync",)])
    assert before_boot["boot"] == PRIVATE  # a hit would read and write wherever the link points
    assert findings(case)[key] == ["corrupt: its directory is a symbolic link, not followed: no boot will use it"]
    _age(case)
    results = run_everything(case, COMMANDS)
    assert key in results["prune"].out and not (root / "compile" / key).is_symlink()
    assert results["boot"] == BUILD  # the next boot builds a real directory in its place


def test_a_layer_directory_that_is_a_link_is_never_followed(case):
    root = case["root"]
    shutil.copytree(root / "compile", case["outside"] / "layer")
    shutil.rmtree(root / "compile")
    (root / "compile").symlink_to(case["outside"] / "layer")
    case["before"] = snapshot(case["outside"])
    _age(case)
    results = run_everything(case)
    assert results["boot"] == PRIVATE
    assert "is a symbolic link" in results["prune"].out
    assert (case["outside"] / "layer" / case["older"] / "inductor" / "kernel").exists()


@pytest.mark.parametrize(
    "part",
    [
        "sidecars",
        "checksums",
        "journal",
        "uses",
        "leases",
        "sidecars/compile",
        "uses/compile",
        "strikes",
        "quarantine",
        "canaries",
    ],
)
def test_a_state_directory_that_is_a_link_makes_every_command_refuse_the_root(case, part):
    state = case["root"] / ".cachekeeper"
    moved = case["outside"] / "state" / part
    moved.parent.mkdir(parents=True, exist_ok=True)
    if (state / part).exists():
        shutil.move(state / part, moved)
    else:
        moved.mkdir()
    (state / part).symlink_to(moved)
    case["before"] = snapshot(case["outside"])
    results = run_everything(case)
    for name in ("ls", "check", "verify", "sync", "prune", "doctor"):
        assert results[name].code == 1 and "is a symbolic link" in results[name].err, name
    assert results["boot"] == PRIVATE  # the root is refused, and the boot goes on without it


@pytest.mark.parametrize("part", ["sidecars", "journal", "uses", "leases", "checksums"])
def test_a_file_where_a_state_directory_should_be_is_reported_in_one_line(case, part):
    state = case["root"] / ".cachekeeper"
    shutil.rmtree(state / part, ignore_errors=True)
    (state / part).write_text("not a directory")
    run_everything(case)  # whatever each says, in one line; nothing outside changes


# --- damaged records ------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["zero bytes", "garbage", "truncated", "a directory"])
def test_a_damaged_manifest_is_named_by_every_command_and_rebuilt_by_doctor(case, damage):
    database = case["root"] / ".cachekeeper" / "manifest.db"
    content = database.read_bytes()
    if damage == "a directory":
        database.unlink()
        database.mkdir()
    else:
        database.write_bytes(
            {"zero bytes": b"", "garbage": os.urandom(8192), "truncated": content[: len(content) // 3]}[damage]
        )
    results = run_everything(case, [("ls",), ("check",), ("prune", "--older-than", "0s", "--yes"), ("doctor",)])
    if damage in ("garbage", "truncated"):
        for name in ("ls", "check", "prune"):
            assert results[name].code == 1 and "is damaged" in results[name].err and "doctor" in results[name].err
        assert results["doctor"].code == 0 and "moved it to" in results["doctor"].out
        listed = invoke("--root", str(case["root"]), "ls", "--json")
        assert {a["key"] for a in json.loads(listed.out)["artifacts"]} >= {case["current"], case["weights"]}
    elif damage == "a directory":
        assert results["ls"].code == 2 and "cannot open the manifest" in results["ls"].err


@pytest.mark.parametrize(
    "damage",
    [
        "{not json",
        "[1, 2]",
        "null",
        '{"format": 1}',
        "KEY:../../outside/x",
        "KEY:compile-a-0123456789abcdef",
        "NAN",
        "RELPATH:",
    ],
)
def test_an_unreadable_sidecar_is_reported_and_never_trusted(case, damage):
    root, key = case["root"], case["current"]
    sidecar = Root(root).sidecar_path("compile", key)
    data = json.loads(sidecar.read_text())
    if damage.startswith("KEY:"):
        sidecar.write_text(json.dumps({**data, "key": damage[4:]}))
    elif damage == "NAN":
        sidecar.write_text(json.dumps({**data, "facts": {**data["facts"], "python": float("nan")}}))
    elif damage == "RELPATH:":
        sidecar.write_text(json.dumps({**data, "relpath": None, "bytes": "lots"}))
    else:
        sidecar.write_text(damage)
    assert read_sidecar(Root(root), "compile", key) is None
    results = run_everything(case, [("verify",), ("check",), ("doctor",)])
    assert any("unreadable sidecar" in f for f in findings(case)[key])
    assert results["check"].code == 1  # not warm: nothing trusts it
    # Neither used nor taken for an unfinished build (whoever wrote it may still use the files): the
    # boot runs cold in a private directory, the files and the damaged record stay for a person to see.
    assert results["boot"] == PRIVATE
    assert sidecar.exists() and (root / "compile" / key / "inductor" / "kernel").is_file()


def test_a_journal_with_torn_garbage_and_wrongly_typed_records_is_folded_around_them(case):
    journal = case["root"] / ".cachekeeper" / "journal" / "hostile-1-abc.jsonl"
    good = {
        "uid": "good-hit",
        "kind": "hit",
        "at": time.time(),
        "layer": "compile",
        "key": case["older"],
        "model": "none",
    }
    lines = [
        json.dumps(good),
        "not json at all",
        json.dumps({"uid": "a", "kind": "hit", "at": "yesterday", "key": case["older"]}),
        json.dumps({"uid": "b"}),
        json.dumps(
            {"uid": "c", "kind": "observed", "at": 1, "facts": {"gpu.type": {"value": {"a": 1}, "source": "observed"}}}
        ),
        json.dumps({"uid": "d", "kind": "observed", "at": 1, "facts": 5}),
        json.dumps({"uid": "e", "kind": "pinned", "at": 1, "key": ["list"]}),
        json.dumps({"uid": "f", "kind": "hit", "at": 10**30, "key": case["older"]}),
        json.dumps({"uid": "g", "kind": "published", "at": 1, "layer": "../..", "key": "../../outside"}),
        json.dumps({"uid": "h", "kind": "hit", "at": 1, "host": "\udcff"}, ensure_ascii=True),
        json.dumps({"uid": "i", "kind": "hit", "at": 1, "host": "nul\u0000"}),
        '{"uid": "torn", "kind": "hit", "at": 1',  # a writer killed mid-line: no newline yet
    ]
    journal.write_text("\n".join(lines))
    synced = invoke("--root", str(case["root"]), "sync", "--json")
    assert synced.code == 0, synced.err
    assert json.loads(synced.out)["unreadable_lines"] == 10 and json.loads(synced.out)["records"] == 1
    run_everything(case)


@pytest.mark.parametrize("damage", ["garbage", "[1]", "LIST_FILES", "ESCAPE"])
def test_a_damaged_checksum_record_is_a_finding_never_a_crash(case, damage):
    [checksums] = (case["root"] / ".cachekeeper" / "checksums" / "compile").glob(f"{case['current']}.*.json")
    data = json.loads(checksums.read_text())
    checksums.write_text(
        {
            "garbage": "\x00\x01garbage",
            "[1]": "[1]",
            "LIST_FILES": json.dumps({**data, "files": [1, 2]}),
            "ESCAPE": json.dumps({**data, "files": {"../../outside/precious": [17, "0" * 32]}}),
        }[damage]
    )
    results = run_everything(case, [("verify",)])
    assert results["verify"].code == 1
    assert findings(case)[case["current"]] == [
        "corrupt: its checksum record is missing or damaged: its files cannot be checked"
    ]


@pytest.mark.parametrize("age", ["young", "old"])
def test_unreadable_uses_and_leases_keep_an_artifact_until_they_stop_changing_for_a_ttl(case, age):
    """How old a record's file looks says nothing (its mtime is another machine's clock): an
    unreadable use or lease keeps the artifact until it has not changed for a TTL of the prune
    host's own time."""
    state, key = case["root"] / ".cachekeeper", case["older"]
    records = (state / "uses" / "compile" / key / "host-1.json", state / "leases" / "compile" / key / "7.lease")
    for path in records:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("garbage")
        if age == "old":
            os.utime(path, (0, 0))
    _age(case)
    results = run_everything(case, [("prune", "--older-than", "0s", "--yes")])
    assert f"kept {key}" in results["prune"].out or f"keep {key}" in results["prune"].out, results["prune"].out
    # A second prune, USE_TTL later by its own clock: the records have not changed since.
    manifest, roots = _manifest(case["root"]), Roots.at(case["root"])
    later = time.time() + uses.USE_TTL + 1
    plan = plan_prune(manifest, roots, PrunePolicy.of(older_than=0), now=later)
    removed = [a.key for a in execute_prune(plan, manifest, roots, now=later).removed]
    assert key in removed and not (case["root"] / "compile" / key).exists()
