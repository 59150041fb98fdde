"""verify: a flipped byte, a truncated file, a removed file, an orphan and a ghost are each found;
a warm artifact that grew is not corrupt; the Hub's weights are checked through their links."""

from __future__ import annotations

import os

import cachekeeper
from cachekeeper import uses
from cachekeeper.scope import Scope
from cachekeeper.store import Root, Roots, publish, read_sidecar
from cachekeeper.sync import sync
from cachekeeper.verify import CORRUPT, GHOST, GROWTH, MISSING, ORPHAN, UNINDEXED, UNRECORDED, verify

from .helpers import artifact, make_hf_model, tree


def build(root, manifest, files: dict[str, bytes]) -> str:
    """A compile artifact published by a real boot, with ``files`` under its directory."""
    with cachekeeper.activate(root, engine={"case": len(tree(root))}) as ck:
        for name, content in files.items():
            path = ck.layers["compile"].path / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
    sync(manifest, Roots.at(root))
    return str(ck.keys["compile"])


def kinds(report):
    return sorted((f.kind, f.key, f.files) for f in report.findings)


def test_a_healthy_cache_verifies_clean(root, manifest):
    build(root, manifest, {"inductor/a.so": b"a" * 1000, "triton/k/b.cubin": b"b" * 10})
    report = verify(manifest, Roots.at(root))
    assert report.ok and report.findings == () and report.checked == 1 and report.hashed_bytes == 1010


def test_each_kind_of_damage_is_found(root, manifest):
    flipped = build(root, manifest, {"inductor/a.so": b"a" * 1000, "inductor/keep": b"k"})
    truncated = build(root, manifest, {"triton/b.cubin": b"b" * 1000})
    removed = build(root, manifest, {"inductor/c.so": b"c" * 10, "inductor/d.so": b"d" * 10})
    ghost = build(root, manifest, {"inductor/e.so": b"e"})
    grown = build(root, manifest, {"inductor/f.so": b"f"})
    compile_dir = root / "compile"
    with open(compile_dir / flipped / "inductor/a.so", "r+b") as handle:  # same size, one byte differs
        handle.seek(500)
        handle.write(b"A")
    os.truncate(compile_dir / truncated / "triton/b.cubin", 999)
    (compile_dir / removed / "inductor/d.so").unlink()
    os.rename(compile_dir / ghost, root / "moved-away")
    (compile_dir / grown / "inductor/bs8.so").write_bytes(b"lazily compiled later")
    (compile_dir / "compile-cpu-00000000000000aa" / "inductor").mkdir(parents=True)  # a build that died

    report = verify(manifest, Roots.at(root))
    assert not report.ok
    assert kinds(report) == sorted(
        [
            (CORRUPT, flipped, ("inductor/a.so",)),
            (CORRUPT, truncated, ("triton/b.cubin",)),
            (MISSING, removed, ("inductor/d.so",)),
            (GHOST, ghost, ()),
            (GROWTH, grown, ("inductor/bs8.so",)),
            (ORPHAN, None, ()),
        ]
    )
    orphan = next(f for f in report.findings if f.kind == ORPHAN)
    assert orphan.path == compile_dir / "compile-cpu-00000000000000aa"
    assert "changed content" in next(f.detail for f in report.findings if f.key == flipped)
    assert "changed size" in next(f.detail for f in report.findings if f.key == truncated)


def test_growth_alone_is_not_a_problem(root, manifest):
    key = build(root, manifest, {"inductor/a.so": b"a"})
    (root / "compile" / key / "inductor" / "b.so").write_bytes(b"new")
    report = verify(manifest, Roots.at(root))
    assert report.ok and [f.kind for f in report.findings] == [GROWTH]


def test_a_damaged_checksum_record_is_told_apart_from_damaged_files(root, manifest):
    key = build(root, manifest, {"inductor/a.so": b"a"})
    [record] = (root / ".cachekeeper" / "checksums" / "compile").glob(f"{key}.*.json")
    record.write_text(record.read_text().replace('"inductor/a.so"', '"inductor/z.so"'))
    [finding] = verify(manifest, Roots.at(root)).findings
    assert finding.kind == CORRUPT and "checksum record" in finding.detail


def test_unindexed_sidecars_orphan_records_and_artifacts_without_checksums(root, manifest):
    old = artifact("compile-a-00000000000000a1", relpath="compile/compile-a-00000000000000a1")
    (root / old.relpath).mkdir(parents=True)
    publish(Root(root), old)  # published by an older cachekeeper, and never synced
    (root / ".cachekeeper" / "checksums" / "compile").mkdir(parents=True)
    (root / ".cachekeeper" / "checksums" / "compile" / "compile-x-00000000000000ff.0123.json").write_text("{}")
    report = verify(manifest, Roots.at(root))
    assert [(f.kind, f.key) for f in report.findings] == [(UNINDEXED, old.key), (ORPHAN, "compile-x-00000000000000ff")]
    manifest.record_artifact(old)
    assert [f.kind for f in verify(manifest, Roots.at(root)).findings] == [ORPHAN, UNRECORDED]


def test_weights_are_checked_through_their_links_and_unrecorded_revisions_are_orphans(root, manifest):
    weights = root / "weights"
    sha = make_hf_model(weights, "org/m", {"config.json": b"{}", "model.bin": b"w" * 4096})
    stray = make_hf_model(weights, "org/stray", {"config.json": b"{}"})
    with cachekeeper.activate(root, model="org/m", revision=sha, layers=["weights"]) as ck:
        pass
    uses.release_all()
    sync(manifest, Roots.at(root))
    assert read_sidecar(Root(root), "weights", str(ck.keys["weights"])).files == 2
    [orphan] = verify(manifest, Roots.at(root)).findings
    assert orphan.kind == ORPHAN and orphan.path.name == stray
    [blob] = [p for p in (weights / "models--org--m" / "blobs").iterdir() if p.stat().st_size == 4096]
    blob.write_bytes(b"W" + b"w" * 4095)
    corrupt = [f for f in verify(manifest, Roots.at(root), scope=Scope(layer="weights")).findings if f.kind == CORRUPT]
    assert [(f.key, f.files) for f in corrupt] == [(str(ck.keys["weights"]), ("model.bin",))]


def test_a_link_out_of_the_root_is_never_followed_and_is_reported(root, manifest, tmp_path):
    outside = tmp_path / "secret"
    outside.write_bytes(b"s" * 100)
    key = build(root, manifest, {"inductor/a.so": b"a"})
    (root / "compile" / key / "inductor" / "link").symlink_to(outside)
    report = verify(manifest, Roots.at(root))
    assert report.hashed_bytes == 1  # never read through the link
    [finding] = report.findings
    assert not report.ok and (finding.kind, finding.files) == (CORRUPT, ("inductor/link",))
