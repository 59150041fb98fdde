"""A real process that boots on a cache root and then behaves as told, for the strike tests.

    python -m tests.boot_child ROOT MODE [CANARY] [KEYWORD=VALUE ...]

MODE: ``ok`` (the block ends well), ``crash`` (``os._exit(1)`` inside the block: no exception, no
atexit, as a segfault loading a kernel), ``raise`` (an exception out of the block), ``segv`` (the
process kills itself with SIGSEGV inside the block). With CANARY (not ``-``), ``ck.canary(CANARY)``
is called inside the block. KEYWORD=VALUE pairs go to ``activate`` (integers as integers).
The first line on stdout is JSON: each layer's status and key, printed before the block acts.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import cachekeeper
from cachekeeper.runtime import BUILD

PARTS = {"inductor/a.so": b"a" * 300, "triton/k.cubin": b"k" * 300}
REPO_ROOT = Path(__file__).resolve().parent.parent


def run_child(root: Path, mode: str, canary: str = "-", *options: str) -> tuple[int, dict, str]:
    """Boot a real process on ``root``: (its exit code, what it printed of its layer, its stderr)."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.boot_child", str(root), mode, canary, *options],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    line = done.stdout.splitlines()[0] if done.stdout.strip() else "{}"
    return done.returncode, json.loads(line), done.stderr


def only_key(root: Path, layer: str = "compile") -> str:
    """The one artifact directory of ``layer`` in ``root``."""
    [key] = [path.name for path in (root / layer).iterdir()]
    return key


def main(argv: list[str]) -> None:
    root, mode, *rest = argv
    value = rest[0] if rest else "-"
    options: dict[str, object] = {"layers": ["compile"]}
    for pair in rest[1:]:
        name, _, text = pair.partition("=")
        options[name] = int(text) if text.lstrip("-").isdigit() else text
    with cachekeeper.activate(Path(root), **options) as ck:  # type: ignore[arg-type]
        use = ck.layers["compile"]
        if use.status == BUILD:
            for name, content in PARTS.items():
                (use.path / name).parent.mkdir(parents=True, exist_ok=True)
                (use.path / name).write_bytes(content)
        if value != "-":
            ck.canary(value)
        print(json.dumps({"status": use.status, "key": str(use.key), "path": str(use.path)}), flush=True)
        if mode == "crash":
            os._exit(1)
        if mode == "segv":
            os.kill(os.getpid(), signal.SIGSEGV)
        if mode == "raise":
            raise RuntimeError("the compiled kernel crashed")


if __name__ == "__main__":
    main(sys.argv[1:])
