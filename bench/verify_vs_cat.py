"""verify's hashing throughput against reading the same files with cat, on 2 GiB or more.

    python bench/verify_vs_cat.py [--gib 2] [--repeats 3]

One published artifact of 32 MiB files (checksums recorded at publish, as a boot does) is read by
`cat FILES > /dev/null` and checked by `cachekeeper verify KEY --json` (the whole command). Each
is timed from a cold page cache (dropped before every run, when this process may) and from a warm
one. Throughput is bytes per second. Target: verify ≥ 0.8× cat.

With a warm page cache cat reads at memory speed, and the command's start-up (about a quarter of
a second) weighs as much as hashing 2 GiB; so the warm case is also timed in this process, as
verify() alone (the library call the command makes), against the same warm cat.
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
from cachekeeper.store import Artifact, Root, Roots, publish, scan_contents
from cachekeeper.verify import verify as verify_artifacts

KEY = "compile-cpu-torch2.13.0-00000000000000bb"
FILE_BYTES = 32 * 2**20


def drop_caches() -> bool:
    subprocess.run(["sync"], check=True)
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=3)
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch) / "root"
        directory = root / "compile" / KEY
        directory.mkdir(parents=True)
        count = max(1, int(arguments.gib * 2**30 // FILE_BYTES))
        for index in range(count):
            (directory / f"blob_{index:04d}.bin").write_bytes(os.urandom(FILE_BYTES))
        contents = scan_contents(directory)
        now = time.time()
        artifact = Artifact(
            KEY,
            "compile",
            "org/model",
            f"compile/{KEY}",
            contents.bytes,
            contents.count,
            now,
            now,
            "bench:1",
            {},
            checksum=contents.checksum,
        )
        publish(Root(root), artifact, contents)
        manifest = Manifest.open(default_url(Roots.at(root)))
        manifest.record_artifact(artifact)
        files = sorted(str(path) for path in directory.iterdir())
        cat = ["sh", "-c", 'cat "$@" > /dev/null', "cat", *files]
        verify = [sys.executable, "-m", "cachekeeper", "--root", str(root), "verify", KEY, "--json"]
        results: dict[str, dict[str, list[float]]] = {
            "cold": {"cat": [], "verify": []},
            "warm": {"cat": [], "verify": []},
        }
        cold = drop_caches()
        for repeat in range(arguments.repeats):
            order = [("cat", cat), ("verify", verify)]
            for name, command in order if repeat % 2 == 0 else reversed(order):
                if cold:
                    drop_caches()
                    results["cold"][name].append(timed(command, capture_output=True))
                timed(command, capture_output=True)  # bring the files into the page cache
                results["warm"][name].append(timed(command, capture_output=True))
        results["warm, verify() in process"] = {"cat": results["warm"]["cat"], "verify": []}
        verify_artifacts(manifest, Roots.at(root), keys=[KEY])  # imports, as the command has done by then
        for _ in range(arguments.repeats):
            started = time.perf_counter()
            assert verify_artifacts(manifest, Roots.at(root), keys=[KEY]).ok
            results["warm, verify() in process"]["verify"].append(time.perf_counter() - started)
    size = contents.bytes
    summary = {}
    print(f"machine: {machine()}")
    for cache, runs in results.items():
        if not runs["cat"]:
            continue
        cat_s, verify_s = statistics.median(runs["cat"]), statistics.median(runs["verify"])
        summary[cache] = {"cat_s": cat_s, "verify_s": verify_s, "ratio": cat_s / verify_s}
        print(
            f"{cache}, {size / 2**30:.1f} GiB: cat {size / cat_s / 2**20:,.0f} MiB/s, "
            f"verify {size / verify_s / 2**20:,.0f} MiB/s: {cat_s / verify_s:.2f}× cat (target ≥ 0.8×)"
        )
    save("verify_vs_cat", {"bytes": size, "runs": results, "summary": summary, "target": 0.8})


if __name__ == "__main__":
    main()
