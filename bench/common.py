"""Shared helpers for the benchmarks: repeated timing, machine description, results files."""

from __future__ import annotations

import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, {time.strftime('%Y-%m-%d')}"


def median_seconds(function: Callable[[], object], repeats: int) -> float:
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        timings.append(time.perf_counter() - started)
    return statistics.median(timings)


@functools.cache
def installed_env() -> dict[str, str]:
    """The environment of a process running cachekeeper as pip installs it: with bytecode.

    pip compiles a package's bytecode when it installs it; a checkout run with
    PYTHONDONTWRITEBYTECODE would compile every module from source at every start instead.
    """
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "cachekeeper")], check=True)
    env = {name: value for name, value in os.environ.items() if name != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return env


def timed(command: list[str], **kwargs) -> float:
    """Seconds one run of ``command`` takes, as an installed cachekeeper would run it."""
    started = time.perf_counter()
    subprocess.run(command, check=True, env=installed_env(), **kwargs)
    return time.perf_counter() - started


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, check=True, env=installed_env(), **kwargs)


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def save(name: str, data: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps({"machine": machine(), **data}, indent=2))


def insert_artifacts(manifest: Path, rows: list[tuple[object, ...]]) -> None:
    """Artifact rows (key, layer, model, relpath, state, bytes, files, created_at, last_used_at,
    builder, facts, depends_on, checksum) written in bulk into a migrated manifest: the benches
    measure reading at scale, not publishing one artifact at a time."""
    import sqlite3

    with sqlite3.connect(manifest) as connection:
        connection.executemany(
            "INSERT INTO artifact (key, layer, model, relpath, state, bytes, files, created_at, last_used_at, "
            "builder, facts, depends_on, checksum) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
