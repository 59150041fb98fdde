"""Attack: bad arguments were refused only after side effects: ``prune --keep-last -1`` exited 2
after ``sync`` had already moved journals and written the manifest. Every command now parses and
validates all its input before it touches the root.
"""

from __future__ import annotations

import pytest

import cachekeeper
from cachekeeper import uses

from .adversary import invoke, snapshot

BAD = [
    ("prune", "--keep-last", "-1"),
    ("prune", "--max-size", "-5GB"),
    ("prune", "--older-than", "soon"),
    ("prune", "--layer", "Not A Layer", "--older-than", "1d"),
    ("prune", "--model", "not a repo", "--older-than", "1d"),
    ("prune", "--key", "nonsense", "--yes"),
    ("prune",),
    ("prune", "--stale"),
    ("prune", "--older-than", "1d", "--target", "missing.toml"),
    ("ls", "--layer", "../x"),
    ("verify", "--model", "a/b/c"),
    ("verify", "not-a-key"),
    ("stats", "--since", "forever"),
    ("pin", "not-a-key"),
    ("inspect", "not-a-key"),
    ("explain", "not-a-key", "also-not"),
    ("check", "--target", "missing.toml"),
    ("sync", "--target", "missing.toml"),
]


@pytest.fixture
def busy_root(root):
    """A root with journals that sync would fold and move: the side effect that must not happen."""
    for engine in ({}, {"width": 8}):
        with cachekeeper.activate(root, layers=["compile"], engine=engine):
            pass
    uses.release_all()
    return root


@pytest.mark.parametrize("command", BAD, ids=" ".join)
def test_bad_input_is_refused_before_the_root_is_touched(busy_root, command):
    before = snapshot(busy_root)
    outcome = invoke("--root", str(busy_root), *command)
    outcome.assert_usage_error()
    assert snapshot(busy_root) == before
