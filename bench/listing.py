"""`ls` at 100,000 artifacts: time to its first page, against `ls --json` and a plain SQL count.

    python bench/listing.py [--artifacts 100000] [--repeats 5] [--before DIR]

A fresh root whose SQLite manifest holds that many published compile artifacts (the rows of
bench/scale.py, facts included, written in bulk; `ls` reads no file per artifact, so none is
made). Each repeat, in turn:

- `cachekeeper ls`, its output a pipe: the time until the header and the first page (100 rows)
  have arrived, and until the whole table has;
- `cachekeeper ls --json`, whole;
- the baseline: a fresh Python process that opens the same manifest with `sqlite3` and runs
  `SELECT count(*) FROM artifact`, the least any command that starts and asks the manifest does.

Medians of fresh processes, ratios against the baseline of the same run. `--before DIR` also times,
on the same manifest, the cachekeeper of another checkout (DIR): its `ls` once (before it was paged
the whole table came at once) and its `ls --json` as often as ours, to show it did not regress.
Target at 100,000: first page ≤ 2 s; `ls --json` ≤ 1.5 s.
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
from cachekeeper.store import Roots

FACTS = json.dumps({f"engine.option_{i}": i for i in range(20)} | {"gpu.arch": "none", "torch": "2.13.0"})
FIRST_PAGE = 100  # rows in ls's first page


def populate(root: Path, count: int) -> Path:
    """``count`` artifact rows, half of them last used a month ago; the manifest's path."""
    roots = Roots.at(root)
    roots.main.initialise()  # a cache root, as the first boot makes it
    Manifest.open(default_url(roots)).engine.dispose()  # the schema, through the migrations
    now = time.time()
    rows = []
    for index in range(count):
        key = f"compile-cpu-torch2.13.0-{index:016x}"
        used = now - (30 * 86400 if index % 2 else 60) - index
        rows.append(
            (
                key,
                "compile",
                "org/model",
                f"compile/{key}",
                "published",
                64,
                1,
                used,
                used,
                "bench:1",
                FACTS,
                "[]",
                None,
            )
        )
    insert_artifacts(roots.main.manifest_path, rows)
    return roots.main.manifest_path


def listing(root: Path, env: dict[str, str]) -> tuple[float, float, int]:
    """(seconds to the first page, seconds to the end, lines) of `cachekeeper ls` into a pipe."""
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "cachekeeper", "--root", str(root), "ls"],
        cwd=root.parent,
        stdout=subprocess.PIPE,
        env=env,
    )
    assert process.stdout is not None
    lines = 0
    first = None
    for _ in process.stdout:
        lines += 1
        if lines == FIRST_PAGE + 1:  # the header and the first page
            first = time.perf_counter() - started
    if process.wait() != 0:
        raise SystemExit("cachekeeper ls failed")
    end = time.perf_counter() - started
    return first if first is not None else end, end, lines


def timed(command: list[str], cwd: Path, env: dict[str, str] | None = None) -> float:
    started = time.perf_counter()
    subprocess.run(command, cwd=cwd, check=True, stdout=subprocess.DEVNULL, env=env or installed_env())
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--before", type=Path, help="another checkout, whose ls is timed once")
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch) / "root"
        manifest = populate(root, arguments.artifacts)
        count = (
            f"import sqlite3; sqlite3.connect({str(manifest)!r}).execute('SELECT count(*) FROM artifact').fetchone()"
        )
        env = installed_env()
        timed([sys.executable, "-m", "cachekeeper", "--root", str(root), "ls", "--json"], root.parent)  # warm up
        firsts, ends, jsons, counts = [], [], [], []
        for _ in range(arguments.repeats):
            first, end, lines = listing(root, env)
            assert lines == arguments.artifacts + 4, lines  # header, rows, total, the layer's total, the root's files
            firsts.append(first)
            ends.append(end)
            jsons.append(timed([sys.executable, "-m", "cachekeeper", "--root", str(root), "ls", "--json"], root.parent))
            counts.append(timed([sys.executable, "-c", count], root.parent))
        before = None
        if arguments.before is not None:
            old = {**env, "PYTHONPATH": str(arguments.before.resolve())}
            subprocess.run(
                [sys.executable, "-m", "compileall", "-q", str(arguments.before / "cachekeeper")], check=True
            )
            json_command = [sys.executable, "-m", "cachekeeper", "--root", str(root), "ls", "--json"]
            before = (
                *listing(root, old)[:2],
                statistics.median(timed(json_command, root.parent, old) for _ in range(arguments.repeats)),
            )
    result = {
        "artifacts": arguments.artifacts,
        "first_page_rows": FIRST_PAGE,
        "ls_first_page_s": statistics.median(firsts),
        "ls_whole_s": statistics.median(ends),
        "ls_json_s": statistics.median(jsons),
        "count_s": statistics.median(counts),
        "runs": {"ls_first_page_s": firsts, "ls_whole_s": ends, "ls_json_s": jsons, "count_s": counts},
        "before": None
        if before is None
        else {"ls_first_page_s": before[0], "ls_whole_s": before[1], "ls_json_s": before[2]},
        "load_average": os.getloadavg()[0],
        "targets": {"ls_first_page_s": 2.0, "ls_json_s": 1.5},
    }
    save("listing", result)
    print(f"machine: {machine()}, load average {result['load_average']:.1f}")
    print(f"{arguments.artifacts:,} artifacts, medians of {arguments.repeats} fresh processes:")
    base = result["count_s"]
    print("| | seconds | × SELECT count(*) |")
    print("|---|---:|---:|")
    print(f"| SELECT count(*) in a fresh Python (baseline) | {base:.2f} | 1.0 |")
    for name, key in (
        (f"`ls`, first page ({FIRST_PAGE} rows)", "ls_first_page_s"),
        ("`ls`, whole table", "ls_whole_s"),
        ("`ls --json`", "ls_json_s"),
    ):
        print(f"| {name} | {result[key]:.2f} | {result[key] / base:.1f} |")
    print(f"first page / ls --json: {result['ls_first_page_s'] / result['ls_json_s']:.2f}")
    if before is not None:
        print(
            f"before (--before {arguments.before}): first page after {before[0]:.1f} s, whole table {before[1]:.1f} s, "
            f"ls --json {before[2]:.2f} s (median of {arguments.repeats})"
        )


if __name__ == "__main__":
    main()
