"""The deploy gate for CI: check the caches, warm them up when cold or stale, then deploy.

    python examples/modal/deploy_gate.py [examples/modal/vllm_app.py]

1. ``modal run APP::check_cache``: ``cachekeeper check`` where the Volumes are (exit 1: not ready);
2. when not ready, ``modal run APP::warm`` boots one container, which builds and publishes, and
   the check runs again;
3. ``modal deploy APP`` only when every layer is warm.

The snapshot tag the deploy will use is printed for the log: ``cachekeeper snapshot-tag``.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

APP = Path(__file__).resolve().parent / "vllm_app.py"
NOT_READY = 1


def gate(app: str, run: Callable[[Sequence[str]], int]) -> int:
    """The gate's steps; ``run`` runs a command and returns its exit code."""
    code = run(["modal", "run", f"{app}::check_cache"])
    if code == NOT_READY:
        code = run(["modal", "run", f"{app}::warm"]) or run(["modal", "run", f"{app}::check_cache"])
    if code != 0:
        print(f"deploy gate: the caches are not ready (exit {code}); not deploying", file=sys.stderr)
        return code
    run(["cachekeeper", "snapshot-tag", "--target", str(Path(app).with_name("cachekeeper.toml"))])
    return run(["modal", "deploy", app])


def main() -> None:
    app = sys.argv[1] if len(sys.argv) > 1 else str(APP)
    sys.exit(gate(app, lambda command: subprocess.call(list(command))))


if __name__ == "__main__":
    main()
