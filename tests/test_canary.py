"""Canaries: the boot that builds an artifact stores the digest of a deterministic result; every boot
that hits it compares, and a mismatch is an error naming both digests and a strike. Boots are real
processes (tests/boot_child.py), each reporting its own canary value."""

from __future__ import annotations

import json
import logging

import pytest

import cachekeeper
from cachekeeper import canary, strikes, uses
from cachekeeper.quarantine import entries
from cachekeeper.runtime import BUILD, HIT
from cachekeeper.store import Root, Roots

from .boot_child import only_key, run_child


def test_a_canary_that_differs_is_an_error_naming_both_digests_and_a_strike(tmp_path):
    root = tmp_path / "root"
    built = '{"text": " Paris.", "logprobs": [-0.01, -0.2]}'
    garbage = '{"text": " the the the", "logprobs": [-9.3, -9.9]}'
    assert run_child(root, "ok", built)[1]["status"] == BUILD
    key = only_key(root)
    assert canary.stored(Root(root), "compile", key) == canary.digest(built)
    code, layer, err = run_child(root, "ok", built)
    assert (code, layer["status"]) == (0, HIT) and "canary" not in err  # the same answer: nothing said
    code, layer, err = run_child(root, "ok", garbage)
    assert (code, layer["status"]) == (0, HIT)  # the boot itself goes on
    [error] = [line for line in err.splitlines() if "the boot that built it computed" in line]
    assert canary.short(canary.digest(built)) in error and canary.short(canary.digest(garbage)) in error
    [strike] = strikes.look(Root(root), "compile", key).strikes
    assert strike.reason.startswith("canary mismatch")
    run_child(root, "ok", garbage)  # a second boot that computes garbage on it
    code, layer, err = run_child(root, "ok", garbage)
    assert layer["status"] == BUILD and "quarantined" in err  # then it is built afresh
    assert canary.stored(Root(root), "compile", key) == canary.digest(garbage)  # this build's answer
    [entry] = entries(Roots.at(root))
    assert entry.canary == canary.digest(built) and all(r.startswith("canary mismatch") for r in entry.reasons)


def test_an_artifact_built_without_a_canary_is_never_compared(tmp_path, caplog):
    root = tmp_path / "root"
    with cachekeeper.activate(root, layers=["compile"]) as ck:
        assert ck.layers["compile"].status == BUILD
    key = str(ck.keys["compile"])
    assert canary.stored(Root(root), "compile", key) is None
    for value in ("one answer", "another"):
        with caplog.at_level(logging.ERROR, logger="cachekeeper"):
            with cachekeeper.activate(root, layers=["compile"]) as ck:
                assert ck.layers["compile"].status == HIT
                assert ck.canary(value) == canary.digest(value)
    uses.release_all()
    assert "canary" not in caplog.text and strikes.look(Root(root), "compile", key) == strikes.Tally()


def test_a_failed_build_leaves_no_canary_for_the_next_build_to_inherit(tmp_path):
    root = tmp_path / "root"
    with pytest.raises(RuntimeError):
        with cachekeeper.activate(root, layers=["compile"]) as ck:
            ck.canary("half built")
            raise RuntimeError("boom")
    with cachekeeper.activate(root, layers=["compile"]) as ck:
        assert ck.layers["compile"].status == BUILD
    assert canary.stored(Root(root), "compile", str(ck.keys["compile"])) is None


def test_a_canary_is_any_plain_value_and_a_bad_one_is_the_callers_error(tmp_path):
    assert canary.digest({"b": 1, "a": [1.5, "x"]}) == canary.digest({"a": [1.5, "x"], "b": 1})
    assert canary.digest(b"bytes") == canary.digest("bytes")
    root = tmp_path / "root"
    with pytest.raises(TypeError, match="plain JSON values"):
        with cachekeeper.activate(root, layers=["compile"]) as ck:
            ck.canary(object())
    with pytest.raises(TypeError):
        canary.digest(float("nan"))
    assert json.loads(json.dumps(canary.digest([1, 2]))) == canary.digest([1, 2])
