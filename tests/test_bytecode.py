"""Images without bytecode for torch get it kept in the compile artifact, and only those."""

from __future__ import annotations

import json
import os
import py_compile
import subprocess
import sys
from pathlib import Path

import pytest

from .helpers import REPO_ROOT

SCRIPT = """
import json, os, sys, cachekeeper
with cachekeeper.activate(sys.argv[1]) as ck:
    print(json.dumps({"prefix": os.environ.get("PYTHONPYCACHEPREFIX"), "sys": sys.pycache_prefix,
                      "writes": not sys.dont_write_bytecode, "artifact": str(ck.layers["compile"].path)}))
"""


def fake_torch(site: Path, with_bytecode: bool) -> None:
    """A package named torch, laid out as an installed one is, with or without its __pycache__."""
    for module in ("torch/__init__.py", "torch/_dynamo/__init__.py"):
        path = site / module
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")
        if with_bytecode:
            py_compile.compile(str(path), doraise=True)


@pytest.mark.parametrize("with_bytecode", [False, True])
def test_bytecode_is_kept_with_the_compile_artifact_only_when_the_image_has_none(tmp_path, with_bytecode):
    site = tmp_path / "site"
    fake_torch(site, with_bytecode)
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "root")],
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO_ROOT)]), "PYTHONDONTWRITEBYTECODE": "1"},
        capture_output=True,
        text=True,
        check=True,
    )
    seen = json.loads(result.stdout)
    if with_bytecode:
        assert seen["prefix"] is None and seen["sys"] is None and not seen["writes"]
    else:
        assert seen["prefix"] == seen["sys"] == str(Path(seen["artifact"]) / "python") and seen["writes"]
