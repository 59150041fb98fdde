"""Planning a prune at scale: time and peak memory of the documented command on a large manifest.

    python bench/prune_plan.py [--artifacts 100000] [--repeats 3]

A fresh root whose SQLite manifest holds that many published compile artifacts (rows written in
bulk, as bench/scale.py does; planning reads rows, uses and leases, not the artifacts' files).
Each measurement is a whole `cachekeeper ... --dry-run --json` process, as a person or a cron job
runs it: wall time (median) and the process's peak resident memory (from wait4). Baselines in the
same run: a plain `SELECT count(*)` in a fresh Python process, and `cachekeeper ls --json`.
Targets (issues 11 and 14): at 100,000 artifacts the plan takes ≤ 3 s and ≤ 300 MB, and planning
by `--max-files` is within 10% of planning by `--max-size`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, insert_artifacts, installed_env, machine, save

sys.path.insert(0, str(REPO))

from cachekeeper.manifest import Manifest, default_url
from cachekeeper.store import Root, Roots

FACTS = json.dumps({f"engine.option_{i}": i for i in range(20)} | {"gpu.arch": "none", "torch": "2.13.0"})


def populate(root: Path, count: int) -> None:
    Root(root).initialise()
    roots = Roots.at(root)
    Manifest.open(default_url(roots))  # the schema the rows go into
    now = time.time()
    rows = []
    for index in range(count):
        key = f"compile-cpu-torch2.13.0-{index:016x}"
        used = now - (30 * 86400 if index % 2 else 60) - index
        size, files = 1_000_000 + index % 1000, 1 + index % 300
        rows.append(
            (
                key,
                "compile",
                f"org/model{index % 50}",
                f"compile/{key}",
                "published",
                size,
                files,
                used,
                used,
                "bench:1",
                FACTS,
                "[]",
                None,
            )
        )
    insert_artifacts(roots.main.manifest_path, rows)


def run(command: list[str]) -> tuple[float, float]:
    """(wall seconds, peak resident MB) of one process."""
    started = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=installed_env())
    _, status, usage = os.wait4(child.pid, 0)
    elapsed = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) not in (0, 1):
        raise SystemExit(f"{' '.join(command)} failed: {child.stderr.read().decode() if child.stderr else ''}")
    return elapsed, usage.ru_maxrss / 1024


def measure(command: list[str], repeats: int) -> dict[str, float]:
    samples = [run(command) for _ in range(repeats)]
    return {"seconds": statistics.median(s for s, _ in samples), "peak_mb": max(m for _, m in samples)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--populate", metavar="ROOT", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    count, repeats = arguments.artifacts, arguments.repeats
    if arguments.populate:
        populate(Path(arguments.populate), count)
        return
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch) / "root"
        # In a process of its own: a child forked from a parent holding 100,000 rows would be charged
        # the parent's memory.
        subprocess.run([sys.executable, __file__, "--artifacts", str(count), "--populate", str(root)], check=True)
        cli = [sys.executable, "-m", "cachekeeper", "--root", str(root)]
        database = Roots.at(root).main.manifest_path
        count_sql = "; ".join(
            [
                "import sqlite3",
                f"connection = sqlite3.connect({str(database)!r})",
                "print(connection.execute('SELECT count(*) FROM artifact').fetchone())",
            ]
        )
        budget_bytes = count * 1_000_000 // 2
        budget_files = sum(1 + index % 300 for index in range(count)) // 2
        results = {
            "sql_count": measure([sys.executable, "-c", count_sql], repeats),
            "ls_json": measure([*cli, "ls", "--json"], repeats),
            "plan_older_than": measure([*cli, "prune", "--older-than", "7d", "--dry-run", "--json"], repeats),
            "plan_max_size": measure([*cli, "prune", "--max-size", str(budget_bytes), "--dry-run", "--json"], repeats),
            "plan_max_files": measure(
                [*cli, "prune", "--max-files", str(budget_files), "--dry-run", "--json"], repeats
            ),
        }
    baseline = results["ls_json"]["seconds"]
    files_vs_size = results["plan_max_files"]["seconds"] / results["plan_max_size"]["seconds"]
    save(
        "prune_plan",
        {
            "artifacts": count,
            "repeats": repeats,
            "results": results,
            "files_vs_size": files_vs_size,
            "targets": {"plan_seconds": 3.0, "plan_peak_mb": 300, "files_vs_size": 1.10},
        },
    )
    print(f"machine: {machine()}")
    print(f"{count:,} artifacts, median of {repeats} runs each (whole processes)")
    print("| command | wall | × ls --json | × SQL count | peak memory |")
    print("|---|---:|---:|---:|---:|")
    for name, result in results.items():
        print(
            f"| {name} | {result['seconds']:.2f} s | {result['seconds'] / baseline:.2f}× "
            f"| {result['seconds'] / results['sql_count']['seconds']:.1f}× | {result['peak_mb']:.0f} MB |"
        )
    print(f"--max-files planning against --max-size planning: {files_vs_size:.2f}× (target ≤ 1.10×)")


if __name__ == "__main__":
    main()
