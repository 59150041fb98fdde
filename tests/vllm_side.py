"""cachekeeper run inside the vLLM venv, as it runs in an image next to vLLM. Run with that venv's
python and the repository on PYTHONPATH (``run_vllm_side`` does both).

    python tests/vllm_side.py activate ROOT MODEL SHA   # activate() the weights and compile layers
    python tests/vllm_side.py serve-args < argvs.json   # read vllm serve command lines with vLLM's parser

``serve_args`` is also called inside a probe worker (vllm_probe.py's ``call``), where vLLM is loaded.

``activate`` prints what the boot was told (keys, hits, the variables it set, ck.engine_args)
and publishes on exit, as a boot does. ``serve-args`` prints, for each command line, what
cachekeeper's vLLM-parser reader makes of it, and the options of vLLM's ``vllm serve`` parser
that are no engine arguments.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent


def activate(root: str, model: str, sha: str) -> dict[str, Any]:
    import cachekeeper

    with cachekeeper.activate(root, model=model, revision=sha, engine={"max_model_len": 1024}) as ck:
        return {
            "keys": {layer: str(key) for layer, key in ck.keys.items()},
            "hits": ck.hits,
            "paths": {layer: str(use.path) for layer, use in ck.layers.items()},
            "env": ck.env,
            "engine_args": dict(ck.engine_args),
            "vllm": ck.facts.value("vllm"),
        }


def serve_args(argvs: list[list[str]]) -> dict[str, Any]:
    from cachekeeper.serve_command import _vllm_parser, read_serve_command

    parser, fields = _vllm_parser()
    frontend = sorted({action.dest for action in parser._actions} - fields - {"help", "model_tag", "config"})
    read = []
    for argv in argvs:
        found = read_serve_command(argv)
        read.append(None if found is None else found._asdict())
    return {"read": read, "frontend_args": frontend}


def run_vllm_side(python: Path, *args: str, stdin: Any = None, env: dict[str, str] | None = None) -> Any:
    """Run this script with the vLLM venv's ``python``; its JSON answer."""
    environ = {name: value for name, value in os.environ.items() if not name.startswith(("VLLM_", "PYTHON"))}
    environ.update(PYTHONPATH=str(REPO_ROOT), **(env or {}))
    done = subprocess.run(
        [str(python), __file__, *args],
        input=None if stdin is None else json.dumps(stdin),
        capture_output=True,
        text=True,
        env=environ,
        timeout=600,
    )
    if done.returncode != 0:
        raise RuntimeError(f"vllm_side.py {args[0]} exited {done.returncode}:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    command = sys.argv[1]
    answer_fd = os.dup(1)
    os.dup2(2, 1)  # vLLM logs to stdout: keep the real stdout for the answer
    if command == "activate":
        answer = activate(*sys.argv[2:5])
    elif command == "serve-args":
        answer = serve_args(json.load(sys.stdin))
    else:
        sys.exit(f"unknown command {command!r}")
    with os.fdopen(answer_fd, "w") as out:
        out.write(json.dumps(answer, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
