"""check --rebuild: run the target's warm-up when a layer is cold or stale, then check again."""

from __future__ import annotations

import json
import sys

from .helpers import run_cli, write_target

BOOT = (
    "import cachekeeper\n"
    "with cachekeeper.activate(target={target!r}) as ck:\n"
    "    (ck.layers['compile'].path / 'kernel').write_text('k')\n"
)


def _target(tmp_path, script: str | None):
    path = tmp_path / "cachekeeper.toml"
    warmup = "" if script is None else f"warmup = {json.dumps([sys.executable, '-c', script])}\n"
    return write_target(path, f'[target]\ngpu = "cpu"\nlayers = ["compile"]\n{warmup}')


def test_a_cold_layer_is_warmed_up_and_checked_again(root, tmp_path):
    target = tmp_path / "cachekeeper.toml"
    _target(tmp_path, BOOT.format(target=str(target)))
    result = run_cli("check", "--target", str(target), "--rebuild", "--json", env={"CACHEKEEPER_ROOT": str(root)})
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["ready"] and report["before_rebuild"]["layers"][0]["status"] == "cold"
    assert "running the warmup" in result.stderr
    again = run_cli("check", "--target", str(target), "--rebuild", env={"CACHEKEEPER_ROOT": str(root)})
    assert again.returncode == 0 and "running the warmup" not in again.stderr  # warm: nothing to run


def test_a_warmup_that_fails_leaves_the_check_failing(root, tmp_path):
    target = _target(tmp_path, "import sys; print('warming'); sys.exit(3)")
    result = run_cli("check", "--target", str(target), "--rebuild", "--json", env={"CACHEKEEPER_ROOT": str(root)})
    assert result.returncode == 1
    assert json.loads(result.stdout)["ready"] is False  # stdout holds the JSON alone
    assert "warming" in result.stderr and "exited with 3" in result.stderr


def test_rebuild_without_a_warmup_is_a_usage_error(root, tmp_path):
    target = _target(tmp_path, None)
    result = run_cli("check", "--target", str(target), "--rebuild", env={"CACHEKEEPER_ROOT": str(root)})
    assert result.returncode == 2 and "names no warmup command" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_warmup_given_as_one_string_is_split_like_a_shell_would(tmp_path):
    from cachekeeper.target import load_target

    path = write_target(tmp_path / "t.toml", '[target]\ngpu = "cpu"\nwarmup = "modal run \'my app.py::warm\'"\n')
    assert load_target(path).warmup == ("modal", "run", "my app.py::warm")
