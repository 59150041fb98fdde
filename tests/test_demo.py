"""The README's first command: the demo runs end to end and shows what it claims."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from .helpers import REPO_ROOT

# The whole demo, in subprocesses: about 45 s.
pytestmark = pytest.mark.slow


def test_the_demo_runs_cold_then_warm_then_stale_then_prunes(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "examples" / "demo.py"), "--root", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "NO_COLOR": "1"},
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    cold, warm = re.findall(r"compile_seconds=\S+ fxgraph_hits=(\d+) fxgraph_misses=(\d+)", out)
    assert cold[0] == "0" and int(cold[1]) >= 1  # the first boot compiled
    assert int(warm[0]) >= 1 and warm[1] == "0"  # the second found Inductor's cache under the key
    assert "cachekeeper: compile build" in out and "cachekeeper: compile hit" in out
    assert re.search(r"torch: \S+ → 2\.14\.1", out)  # the stale layer names what changed
    assert "Freed" in out and "0 artifact(s)" in out
