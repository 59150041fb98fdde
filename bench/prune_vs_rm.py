"""prune's deletion throughput against rm -rf, on an artifact of 200,000 files.

    python bench/prune_vs_rm.py [--files 200000] [--repeats 3]

Two identical trees are made for each repeat: one is a published artifact that `cachekeeper
prune --key KEY --yes` removes (the whole command, start-up and manifest included), the other is
removed by `rm -rf`. Throughput is files per second; the order alternates between repeats.
Target: prune ≥ 0.8× rm -rf.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, machine, save, timed

sys.path.insert(0, str(REPO))

from cachekeeper.manifest import Manifest, default_url
from cachekeeper.store import Artifact, Root, Roots, publish

KEY = "compile-cpu-torch2.13.0-00000000000000aa"


def make_tree(path: Path, files: int) -> None:
    """``files`` files of 512 bytes, 200 to a directory, as Inductor and Triton caches look."""
    payload = os.urandom(512)
    for index in range(files):
        directory = path / f"{index // 40000:02d}" / f"{index // 200:05d}"
        if index % 200 == 0:
            directory.mkdir(parents=True)
        (directory / f"kernel_{index}.bin").write_bytes(payload)


def prune_seconds(scratch: Path, files: int) -> float:
    root = scratch / "root"
    make_tree(root / "compile" / KEY, files)
    then = time.time() - 86400
    artifact = Artifact(KEY, "compile", "org/model", f"compile/{KEY}", 512 * files, files, then, then, "bench:1", {})
    publish(Root(root), artifact)
    Manifest.open(default_url(Roots.at(root))).record_artifact(artifact)
    subprocess.run(["sync"], check=True)
    elapsed = timed(
        [sys.executable, "-m", "cachekeeper", "--root", str(root), "prune", "--key", KEY, "--yes", "--json"],
        capture_output=True,
    )
    assert not (root / "compile" / KEY).exists()
    return elapsed


def rm_seconds(scratch: Path, files: int) -> float:
    tree = scratch / "plain"
    make_tree(tree, files)
    subprocess.run(["sync"], check=True)
    return timed(["rm", "-rf", str(tree)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=3)
    arguments = parser.parse_args()
    prune_times, rm_times = [], []
    for repeat in range(arguments.repeats):
        with tempfile.TemporaryDirectory() as scratch:
            pair = [
                lambda: prune_times.append(prune_seconds(Path(scratch), arguments.files)),
                lambda: rm_times.append(rm_seconds(Path(scratch), arguments.files)),
            ]
            for measure in pair if repeat % 2 == 0 else reversed(pair):
                measure()
    prune_s, rm_s = statistics.median(prune_times), statistics.median(rm_times)
    ratio = rm_s / prune_s  # throughput ratio: files per second of prune over rm's
    save(
        "prune_vs_rm",
        {"files": arguments.files, "prune_s": prune_times, "rm_s": rm_times, "ratio": ratio, "target": 0.8},
    )
    print(f"machine: {machine()}")
    print(
        f"{arguments.files:,} files: prune {prune_s:.2f} s ({arguments.files / prune_s:,.0f} files/s), "
        f"rm -rf {rm_s:.2f} s ({arguments.files / rm_s:,.0f} files/s): {ratio:.2f}× rm -rf (target ≥ 0.8×)"
    )


if __name__ == "__main__":
    main()
