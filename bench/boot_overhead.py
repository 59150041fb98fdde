"""activate()'s cost on a warm hit, against the same process without cachekeeper.

    python bench/boot_overhead.py [--repeats 21]

Each number is the median over fresh processes, timed inside the process so that the noise of
starting interpreters does not drown a few milliseconds:
- torch boot: a process that imports torch, as every vLLM or torch.compile boot does; cachekeeper's
  cost is what `import cachekeeper` plus activate() add after that, and the ratio compares the two
  processes' boot times (torch import alone vs torch import + cachekeeper);
- bare interpreter: the worst case, where every module cachekeeper imports is charged to it;
- enter + exit: activate() alone, with everything already imported.
Target: ≤ 20 ms on the 2-core CI machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from common import machine, python, run, save

PROBE = """
import json, time
started = time.perf_counter()
{prelude}
ready = time.perf_counter()
import cachekeeper
with cachekeeper.activate({root!r}) as ck:
    entered = time.perf_counter()
assert ck.layers["compile"].hit
done = time.perf_counter()
with cachekeeper.activate({root!r}):
    pass
again = time.perf_counter()
print(json.dumps({{"prelude": ready - started, "added": done - ready, "enter_exit": again - done}}))
"""


def measure(root: str, prelude: str, repeats: int) -> dict[str, float]:
    samples = [json.loads(run(python(PROBE.format(prelude=prelude, root=root))).stdout) for _ in range(repeats)]
    prelude_s = statistics.median(s["prelude"] for s in samples)
    added_s = statistics.median(s["added"] for s in samples)
    return {
        "prelude_ms": prelude_s * 1000,
        "added_ms": added_s * 1000,
        "enter_exit_ms": statistics.median(s["enter_exit"] for s in samples) * 1000,
        "ratio": (prelude_s + added_s) / prelude_s if prelude_s else float("inf"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=21)
    repeats = parser.parse_args().repeats
    with tempfile.TemporaryDirectory() as scratch:
        root = str(Path(scratch) / "root")
        run(python(f"import cachekeeper\nwith cachekeeper.activate({root!r}): pass"))  # publish, so later boots hit
        torch_boot = measure(root, "import torch", repeats)
        bare = measure(root, "pass", repeats)
    save("boot_overhead", {"torch_boot": torch_boot, "bare_interpreter": bare, "target_ms": 20, "repeats": repeats})
    print(f"machine: {machine()}")
    print(
        f"torch boot: import torch {torch_boot['prelude_ms']:.0f} ms; cachekeeper adds {torch_boot['added_ms']:.1f} ms "
        f"(×{torch_boot['ratio']:.3f}); target ≤ 20 ms"
    )
    print(f"bare interpreter (worst case): cachekeeper adds {bare['added_ms']:.1f} ms")
    print(f"activate() enter + exit with everything imported: {torch_boot['enter_exit_ms']:.1f} ms")


if __name__ == "__main__":
    main()
