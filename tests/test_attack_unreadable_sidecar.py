"""Attack: a sidecar that exists but cannot be read (audit finding 3). A newer cachekeeper's
format, a truncated write, garbage, wrong types, another key's record: the artifact must be
neither used nor taken for an unfinished build. A boot goes cold in a private directory and never
takes the lease to clear the key; prune and its leftovers cleanup keep the files, even when the
server's own use of them looks long dead by the observer's clock; verify reports the sidecar.

Throughout, a real server process that built and published the key keeps using it, and checks
after every attack that each of its files is still there, unchanged.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import cachekeeper
from cachekeeper import uses
from cachekeeper.leftovers import LEFTOVER_AGE, clear_leftovers
from cachekeeper.manifest import Manifest, default_url
from cachekeeper.prune import PrunePolicy, execute_prune, plan_prune
from cachekeeper.runtime import PRIVATE
from cachekeeper.store import Root, Roots, UnreadableSidecar, look_up_sidecar

from .adversary import examples, invoke
from .helpers import Server, tree


@pytest.fixture(autouse=True)
def no_uses_left():
    yield
    uses.release_all()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A root whose compile key a running server built, published and goes on using."""
    root = tmp_path_factory.mktemp("unreadable") / "root"
    root.mkdir()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("HF_HUB_OFFLINE", "1")
        server = Server(root)
    assert server.status() == "build"
    for part in range(3):
        server.ask(f"write {part}")
    assert server.ask("finish")["published"] == {"compile": True}
    sidecar = Root(root).sidecar_path("compile", server.key())
    state = {"root": root, "server": server, "sidecar": sidecar, "good": sidecar.read_bytes(), "clock": time.time()}
    yield state
    server.stop()


def _attack(served: dict, damage: bytes | str) -> None:
    """Replace the sidecar by ``damage`` (bytes; or "DIRECTORY" / "DANGLING"), then boot, prune and
    clean leftovers; assert that nothing was used, cleared or removed; put the sidecar back."""
    root, server, sidecar = served["root"], served["server"], served["sidecar"]
    key, directory = server.key(), server.path()
    sidecar.unlink()
    if damage == "DIRECTORY":
        sidecar.mkdir()
    elif damage == "DANGLING":
        sidecar.symlink_to(sidecar.parent / "nothing-here.json")
    else:
        sidecar.write_bytes(damage if isinstance(damage, bytes) else damage.encode())
    try:
        assert isinstance(look_up_sidecar(Root(root), "compile", key), UnreadableSidecar)
        before = tree(directory)

        with cachekeeper.activate(root, layers=["compile"]) as ck:  # would wait for a builder: none may start
            use = ck.layers["compile"]
        assert use.status == PRIVATE and root not in use.path.parents

        outcome = invoke("--root", str(root), "prune", "--older-than", "0s", "--yes")
        assert outcome.code in (0, 1) and "Traceback" not in outcome.err, outcome

        # The server's use renews every 75 s; by a prune clock hours ahead it looks long dead:
        # only the unreadable sidecar keeps the files now.
        manifest, roots = Manifest.open(default_url(Roots.at(root))), Roots.at(root)
        for _ in range(2):
            served["clock"] += 4 * LEFTOVER_AGE
            now = served["clock"]
            plan = plan_prune(manifest, roots, PrunePolicy.of(older_than=0), now=now)
            result = execute_prune(plan, manifest, roots, now=now)
            assert key not in [a.key for a in result.removed]
            assert clear_leftovers(manifest, roots, now=now).partial_builds == ()

        assert tree(directory) == before
        assert server.ask("check")["missing"] == []
    finally:
        if sidecar.is_dir() and not sidecar.is_symlink():
            sidecar.rmdir()
        else:
            sidecar.unlink()
        sidecar.write_bytes(served["good"])


def _good(served: dict) -> dict:
    return json.loads(served["good"])


NAMED = {
    "newer format": lambda good: json.dumps({**good, "format": 2, "shards": ["a", "b"]}),
    "truncated by half": lambda good: json.dumps(good)[: len(json.dumps(good)) // 2],
    "empty": lambda good: "",
    "garbage": lambda good: b"\x00\xff\xfe garbage \x01",
    "null": lambda good: "null",
    "a list": lambda good: "[1, 2, 3]",
    "no fields": lambda good: '{"format": 1}',
    "wrong types": lambda good: json.dumps({**good, "bytes": "lots", "files": None}),
    "another key": lambda good: json.dumps({**good, "key": "compile-other-0123456789abcdef"}),
    "a key that is no key": lambda good: json.dumps({**good, "key": "../../etc"}),
    "not UTF-8": lambda good: json.dumps(good).replace('"compile"', '"comp\xefle"').encode("latin-1"),
    "a directory": lambda good: "DIRECTORY",
    "a link to nothing": lambda good: "DANGLING",
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(NAMED))
def test_an_unreadable_sidecar_is_never_used_nor_cleared(served, name):
    _attack(served, NAMED[name](_good(served)))


@pytest.mark.slow
def test_verify_reports_an_unreadable_sidecar_not_an_orphan(served):
    sidecar = served["sidecar"]
    sidecar.write_text(json.dumps({**_good(served), "format": 99}))
    try:
        outcome = invoke("--root", str(served["root"]), "verify", "--json")
        findings = [(f["kind"], f["key"], f["detail"]) for f in json.loads(outcome.out)["findings"]]
        key = served["server"].key()
        assert any(kind == "corrupt" and k == key and "unreadable sidecar" in d for kind, k, d in findings)
        assert not any(kind == "orphan" for kind, _, _ in findings), findings
        assert outcome.code == 1
    finally:
        sidecar.write_bytes(served["good"])


FIELDS = ["format", "key", "layer", "model", "relpath", "bytes", "files", "created_at", "last_used_at", "facts"]
WRONG = st.one_of(
    st.none(),
    st.booleans(),
    st.text(max_size=5),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


def _damage(data: st.DataObject, good: bytes) -> bytes:
    """A sidecar that exists and (mostly) cannot be read: a newer format, a truncation, a field of
    the wrong type, another key's record, trailing bytes, garbage."""
    record = json.loads(good)
    kind = data.draw(st.sampled_from(["newer", "truncated", "field", "another key", "extra bytes", "garbage"]))
    if kind == "newer":
        return json.dumps({**record, "format": data.draw(st.integers(2, 10**6))}).encode()
    if kind == "truncated":
        return good[: data.draw(st.integers(0, len(good) - 1))]
    if kind == "field":
        return json.dumps({**record, data.draw(st.sampled_from(FIELDS)): data.draw(WRONG)}).encode()
    if kind == "another key":
        return json.dumps({**record, "key": f"compile-x-{data.draw(st.integers(0, 2**64 - 1)):016x}"}).encode()
    if kind == "extra bytes":
        return good + data.draw(st.binary(min_size=1, max_size=40))
    return data.draw(st.binary(max_size=300))


@pytest.mark.slow
@examples(20)
@given(data=st.data())
def test_generated_damage_to_a_sidecar_in_use_never_costs_the_server_its_files(served, data):
    damage = _damage(data, served["good"])
    assume(isinstance(_reads_as(served, damage), UnreadableSidecar))
    _attack(served, damage)


def _reads_as(served: dict, damage: bytes) -> object:
    """What a sidecar of ``damage`` reads as, found in a scratch root (the served one is untouched)."""
    scratch = Path(served["root"]).parent / "scratch"
    path = Root(scratch).sidecar_path("compile", served["server"].key())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(damage)
    return look_up_sidecar(Root(scratch), "compile", served["server"].key())
