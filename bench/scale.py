"""How cost grows with the manifest: check, ls and prune at 1k, 10k and 100k artifacts.

    python bench/scale.py [--sizes 1000,10000,100000] [--repeats 5]

Each size gets a fresh root whose manifest holds that many published compile artifacts (rows
written in bulk; every artifact also has its sidecar and a small directory, so prune removes
real files) plus the one artifact the target's check finds warm. Timings are medians of whole
CLI runs (`cachekeeper check --json`, `cachekeeper ls --json`), and one real prune of half the
artifacts (`--older-than`), timed once per size. Targets at 100k: check ≤ 0.3 s, ls ≤ 1.5 s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, insert_artifacts, installed_env, machine, save

sys.path.insert(0, str(REPO))

from cachekeeper.manifest import Manifest, default_url
from cachekeeper.store import Artifact, Root, Roots, publish

TARGET = '[target]\ngpu = "cpu"\nmodel = "org/model"\nrevision = "' + "a" * 40 + '"\nlayers = ["compile"]\n'
FACTS = {f"engine.option_{i}": i for i in range(20)} | {"gpu.arch": "none", "torch": "2.13.0", "python": "3.11.7"}


def populate(root: Path, count: int) -> None:
    """``count`` published artifacts, half of them unused for a month, then the target's own."""
    roots = Roots.at(root)
    roots.main.initialise()  # a cache root, as the first boot makes it (commands refuse unmarked ones)
    Manifest.open(default_url(roots))  # creates the schema the rows below go into
    now = time.time()
    rows = []
    for index in range(count):
        key = f"compile-cpu-torch2.13.0-{index:016x}"
        used = now - (30 * 86400 if index % 2 else 60)
        artifact = Artifact(key, "compile", "org/model", f"compile/{key}", 64, 1, used, used, "bench:1", FACTS)
        directory = root / artifact.relpath
        directory.mkdir(parents=True)
        (directory / "kernel.bin").write_bytes(b"x" * 64)
        publish(Root(root), artifact)
        data = artifact.to_json()
        rows.append(
            (
                key,
                "compile",
                "org/model",
                artifact.relpath,
                "published",
                64,
                1,
                used,
                used,
                "bench:1",
                json.dumps(data["facts"]),
                "[]",
                None,
            )
        )
    insert_artifacts(roots.main.manifest_path, rows)
    cli(root, "run", "--", sys.executable, "-c", "pass")  # the target's key, published and observed


def cli(root: Path, *args: str) -> float:
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "cachekeeper", "--root", str(root), *args],
        cwd=root.parent,
        capture_output=True,
        text=True,
        env=installed_env(),
    )
    if result.returncode not in (0, 1):
        raise SystemExit(f"cachekeeper {' '.join(args)} failed: {result.stderr}")
    return time.perf_counter() - started


def measure(count: int, repeats: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch) / "root"
        (Path(scratch) / "cachekeeper.toml").write_text(TARGET)
        started = time.perf_counter()
        populate(root, count)
        setup = time.perf_counter() - started
        check = statistics.median(cli(root, "check", "--json") for _ in range(repeats))
        listing = statistics.median(cli(root, "ls", "--json") for _ in range(repeats))
        planning = statistics.median(
            cli(root, "prune", "--older-than", "7d", "--dry-run", "--json") for _ in range(repeats)
        )
        pruning = cli(root, "prune", "--older-than", "7d", "--yes", "--json")
    return {
        "artifacts": count,
        "check_s": check,
        "ls_s": listing,
        "prune_plan_s": planning,
        "prune_s": pruning,
        "pruned": count // 2,
        "setup_s": setup,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--repeats", type=int, default=5)
    arguments = parser.parse_args()
    rows = [measure(int(size), arguments.repeats) for size in arguments.sizes.split(",")]
    save("scale", {"rows": rows, "targets": {"check_s": 0.3, "ls_s": 1.5}})
    print(f"machine: {machine()}")
    print("| artifacts | check --json | ls --json | prune plan (dry run) | prune of half |")
    print("|---:|---:|---:|---:|---:|")
    for row in rows:
        per = row["prune_s"] / max(row["pruned"], 1) * 1000
        print(
            f"| {row['artifacts']:,} | {row['check_s']:.2f} s | {row['ls_s']:.2f} s | {row['prune_plan_s']:.2f} s "
            f"| {row['prune_s']:.1f} s ({per:.1f} ms each) |"
        )


if __name__ == "__main__":
    main()
