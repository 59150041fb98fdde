"""The cache root on disk: sidecars written last and first-wins, paths that never leave the root."""

from __future__ import annotations

import json
import os

import pytest

from cachekeeper.errors import UnsafePath
from cachekeeper.store import Root, iter_sidecars, measure, publish, read_sidecar, remove_tree, unpublish

from .helpers import artifact


def test_publish_writes_a_sidecar_that_reads_back(root):
    record = artifact()
    assert read_sidecar(Root(root), "compile", record.key) is None
    assert publish(Root(root), record) is True
    assert read_sidecar(Root(root), "compile", record.key) == record
    assert not [p for p in Root(root).sidecar_path("compile", record.key).parent.iterdir() if p.name.startswith(".")]


def test_the_first_publisher_wins_and_the_second_changes_nothing(root):
    first, second = artifact(builder="a:1"), artifact(builder="b:2")
    assert publish(Root(root), first) is True
    assert publish(Root(root), second) is False
    assert read_sidecar(Root(root), "compile", first.key).builder == "a:1"


def test_unpublish_removes_only_the_sidecar(root):
    record = artifact()
    publish(Root(root), record)
    (root / record.relpath).mkdir(parents=True)
    assert unpublish(Root(root), "compile", record.key) is True
    assert unpublish(Root(root), "compile", record.key) is False
    assert (root / record.relpath).is_dir()


@pytest.mark.parametrize(
    "content",
    [b"", b"{", b"[]", b'{"format": 1}', json.dumps({**artifact().to_json(), "layer": "weights"}).encode()],
)
def test_a_garbled_sidecar_is_no_artifact_and_iter_reports_it(root, content):
    record = artifact()
    path = Root(root).sidecar_path("compile", record.key)
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    assert read_sidecar(Root(root), "compile", record.key) is None
    [(found, problem)] = list(iter_sidecars(Root(root)))
    assert found == path and isinstance(problem, ValueError) and str(path) in str(problem)


@pytest.mark.parametrize("name", ["/etc", "../outside", "compile/../../outside", "", ".", "compile/x/..", "compile-k"])
def test_names_that_could_leave_the_root_are_refused(root, name):
    with pytest.raises(UnsafePath):
        Root(root).artifact_dir("compile", name)
    with pytest.raises(UnsafePath):
        Root(root).layer_dir(name)


def test_a_symlinked_parent_directory_is_refused(root, tmp_path):
    outside = tmp_path / "outside"
    (outside / "victim").mkdir(parents=True)
    (root / "compile").symlink_to(outside)
    with pytest.raises(UnsafePath, match="symbolic link"):
        remove_tree(Root(root), ("compile", "victim"))
    assert (outside / "victim").is_dir()


def test_an_artifact_directory_that_is_a_link_is_removed_as_a_link(root, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep me")
    (root / "compile").mkdir()
    (root / "compile" / "k").symlink_to(outside)
    remove_tree(Root(root), ("compile", "k"))
    assert not (root / "compile" / "k").exists() and (outside / "precious").read_text() == "keep me"


def test_remove_tree_of_nothing_is_fine_and_links_inside_are_not_followed(root, tmp_path):
    remove_tree(Root(root), ("compile", "missing"))
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep me")
    tree = root / "compile" / "k"
    tree.mkdir(parents=True)
    (tree / "link").symlink_to(outside)
    remove_tree(Root(root), ("compile", "k"))
    assert not tree.exists() and (outside / "precious").exists()


def test_measure_counts_regular_files_only(root):
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "one").write_bytes(b"x" * 10)
    (root / "a" / "b" / "two").write_bytes(b"y" * 5)
    os.symlink("one", root / "a" / "link")
    assert measure(root / "a") == (15, 2)
    assert measure(root / "missing") == (0, 0)
