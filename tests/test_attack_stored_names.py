"""Attack: a stored field becomes a path. Sidecars, manifest rows and the host's name are written
by people and programs cachekeeper does not control; whatever they hold, nothing outside the
root is removed or read, because paths are made only from validated names (store.layout).

Each case plants hostile values in a real root, then runs prune, verify, inspect, doctor and a
boot, and checks a sentinel tree outside the root byte for byte.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import text

import cachekeeper
from cachekeeper import uses
from cachekeeper.errors import UnsafePath
from cachekeeper.journal import Journal
from cachekeeper.manifest import Manifest, default_url
from cachekeeper.store import Root, Roots

from .adversary import examples, invoke, snapshot
from .helpers import put

# Values a hostile writer would try: paths out of the root, into the state directory, or odd names.
ESCAPES = [
    "../../outside/victim",
    "/etc/passwd",
    "..",
    ".",
    "",
    "a/../../b",
    "x\0y",
    "../" * 8 + "tmp",
    ".cachekeeper",
    "compile",
]
hostile_names = st.one_of(
    st.sampled_from(ESCAPES),
    st.text(alphabet="./\\abc-_0123456789", min_size=0, max_size=24),
)


def _outside(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    outside = tmp_path / "outside"
    for relative in ("victim", "compile/compile-a-00000000000000aa/data", "checksums/x.json", "etc/passwd"):
        (outside / relative).parent.mkdir(parents=True, exist_ok=True)
        (outside / relative).write_text("not cachekeeper's")
    return outside, snapshot(outside)


def _everything(root: Path) -> None:
    """The commands that read or remove by a recorded name, and a boot; none may crash."""
    for command in (
        ("verify",),
        ("prune", "--older-than", "0s", "--yes"),
        ("inspect", "compile-a-00000000000000aa"),
        ("doctor",),
        ("ls",),
    ):
        outcome = invoke("--root", str(root), *command)
        assert outcome.code in (0, 1, 2) and "Traceback" not in outcome.out + outcome.err, (command, outcome)
    with cachekeeper.activate(root, layers=["compile"]):
        pass
    uses.release_all()


def _set_row(root: Path, key: str, **columns: str) -> None:
    manifest = Manifest.open(default_url(Roots.at(root)))
    with manifest.engine.begin() as connection:
        for column, value in columns.items():
            connection.execute(
                text(f"update artifact set {column} = :value where key = :key"), {"value": value, "key": key}
            )


@examples(25)
@given(checksum=hostile_names)
def test_a_checksum_field_never_becomes_a_path(tmp_path_factory, checksum):
    tmp_path = tmp_path_factory.mktemp("checksum")
    root = tmp_path / "root"
    Root(root).initialise()
    outside, before = _outside(tmp_path)
    manifest = Manifest.open(default_url(Roots.at(root)))
    record = put(root, manifest, "compile-a-00000000000000aa", age_days=30)
    sidecar = Root(root).sidecar_path("compile", record.key)
    sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), "checksum": checksum}))
    _set_row(root, record.key, checksum=checksum)
    _everything(root)
    assert snapshot(outside) == before


@examples(25)
@given(layer=hostile_names, relpath=hostile_names)
def test_a_rows_layer_and_path_never_become_paths(tmp_path_factory, layer, relpath):
    tmp_path = tmp_path_factory.mktemp("row")
    root = tmp_path / "root"
    Root(root).initialise()
    outside, before = _outside(tmp_path)
    manifest = Manifest.open(default_url(Roots.at(root)))
    record = put(root, manifest, "compile-a-00000000000000aa", age_days=30)
    _set_row(root, record.key, layer=layer, relpath=relpath)
    _everything(root)
    assert snapshot(outside) == before


@pytest.mark.parametrize("host", ["../../outside", "/etc", "a/b", "..", "evil\nname", "x" * 300])
def test_a_hostname_never_puts_a_journal_outside_its_directory(tmp_path, monkeypatch, host):
    root = tmp_path / "root"
    Root(root).initialise()
    outside, before = _outside(tmp_path)
    monkeypatch.setattr(socket, "gethostname", lambda: host)
    journal = Journal(Root(root))
    assert journal.path.parent == Root(root).journal_dir
    with cachekeeper.activate(root, layers=["compile"]):
        pass
    uses.release_all()
    assert all(p.parent == Root(root).journal_dir for p in Root(root).journal_dir.glob("*.jsonl"))
    assert snapshot(outside) == before


@pytest.mark.parametrize(
    ("maker", "arguments"),
    [
        ("artifact_dir", ("compile", "../x")),
        ("artifact_dir", ("compile", "compile-a-00000000000000aa/../../x")),
        ("artifact_dir", ("../compile", "compile-a-00000000000000aa")),
        ("sidecar_path", ("compile", "weights-x-00000000000000aa")),
        ("checksums_path", ("compile", "compile-a-00000000000000aa", "../../x")),
        ("uses_dir", ("compile", "..")),
        ("hub_snapshot", ("org/../x", "a" * 40)),
        ("hub_snapshot", ("org/m", "../" + "a" * 37)),
        ("layer_dir", (".cachekeeper",)),
    ],
)
def test_every_path_maker_refuses_a_name_that_is_not_plain(root, maker, arguments):
    with pytest.raises(UnsafePath):
        getattr(Root(root), maker)(*arguments)


def test_an_old_artifact_with_hostile_names_is_kept_while_the_rest_are_pruned(root, tmp_path):
    outside, before = _outside(tmp_path)
    manifest = Manifest.open(default_url(Roots.at(root)))
    good = put(root, manifest, "compile-a-00000000000000bb", age_days=30)
    bad = put(root, manifest, "compile-a-00000000000000aa", age_days=30)
    _set_row(root, bad.key, checksum="../../outside/victim")
    outcome = invoke("--root", str(root), "prune", "--older-than", "1d", "--yes", "--json")
    assert outcome.code == 0, outcome.err
    assert [a["key"] for a in json.loads(outcome.out)["removed"]] == [good.key]
    assert snapshot(outside) == before
