"""What the adversarial tests share: the CLI run in-process, proof that nothing changed, real
read-only and full file systems.

``CACHEKEEPER_SOAK=1`` (``make soak``) runs every property with many more examples and the load
test for longer; the default keeps the suite within its time budget, deterministically.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

import cachekeeper
from cachekeeper import cli

SOAK = os.environ.get("CACHEKEEPER_SOAK") == "1"


def examples(count: int) -> settings:
    """Hypothesis settings: ``count`` examples (twenty times more in a soak), the same ones on every
    run, and no example database left in the checkout."""
    return settings(
        max_examples=count * 20 if SOAK else count,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


@dataclass(frozen=True)
class Outcome:
    code: int
    out: str
    err: str

    def assert_usage_error(self) -> None:
        """Exit 2, one line on stderr starting with ``error:``, no traceback anywhere."""
        assert self.code == 2, (self.code, self.out, self.err)
        self.assert_one_line_error()

    def assert_one_line_error(self) -> None:
        lines = self.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), self.err
        assert "Traceback" not in self.out + self.err


def invoke(*args: str, env: Mapping[str, str | None] | None = None) -> Outcome:
    """``cachekeeper ARGS`` in this process (a subprocess costs a second and a half here), with
    ``env`` set for the call (None removes a variable)."""
    out, err = io.StringIO(), io.StringIO()
    with environment(env or {}), redirect_stdout(out), redirect_stderr(err):
        try:
            cli.main(list(args))
        except SystemExit as done:
            code = done.code
        else:
            raise AssertionError("cli.main returned without an exit code")
    return Outcome(code if isinstance(code, int) else 0, out.getvalue(), err.getvalue())


@contextmanager
def environment(changes: Mapping[str, str | None]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in changes}
    try:
        for name, value in changes.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def snapshot(path: Path) -> dict[str, str]:
    """Every entry under ``path`` with its content (files), target (links) or kind: equal
    snapshots mean nothing was created, changed or removed. Links are never followed."""
    found = {}
    for directory, dirs, files in os.walk(path):
        for name in dirs + files:
            entry = Path(directory) / name
            relative = str(entry.relative_to(path))
            if entry.is_symlink():
                found[relative] = "link " + os.readlink(entry)
            elif entry.is_dir():
                found[relative] = "dir"
            else:
                found[relative] = "file " + hashlib.sha256(entry.read_bytes()).hexdigest()
    return found


def _run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True)


@contextmanager
def read_only(path: Path) -> Iterator[None]:
    """``path`` on a read-only file system for as long as the block runs: a read-only bind mount
    of itself where this process may mount (root), else, for any other user, every directory and
    file without write permission. Skips the test where neither can be had."""
    if os.geteuid() != 0:
        modes = {p: p.lstat().st_mode for p in [path, *path.rglob("*")] if not p.is_symlink()}
        for p in modes:
            p.chmod(0o555 if p.is_dir() else 0o444)
        try:
            yield
        finally:
            for p, mode in modes.items():
                p.chmod(mode)
        return
    bind = _run("mount", "--bind", str(path), str(path))
    if bind.returncode != 0:
        pytest.skip(f"cannot make a read-only root here: mount says {bind.stderr.strip()}")
    try:
        remount = _run("mount", "-o", "remount,bind,ro", str(path))
        if remount.returncode != 0:
            pytest.skip(f"cannot make a read-only root here: mount says {remount.stderr.strip()}")
        yield
    finally:
        _unmount(path)


@contextmanager
def read_only_view(path: Path, view: Path) -> Iterator[None]:
    """``path`` seen read-only at ``view`` too, while it stays writable where it is: a Volume that
    servers mount read-only and housekeeping mounts writable. Needs the right to mount (root)."""
    view.mkdir(parents=True, exist_ok=True)
    bind = _run("mount", "--bind", str(path), str(view))
    if bind.returncode != 0:
        pytest.skip(f"cannot mount a read-only view here: mount says {bind.stderr.strip()}")
    try:
        remount = _run("mount", "-o", "remount,bind,ro", str(view))
        if remount.returncode != 0:
            pytest.skip(f"cannot mount a read-only view here: mount says {remount.stderr.strip()}")
        yield
    finally:
        _unmount(view)


@contextmanager
def small_disk(path: Path, size: str) -> Iterator[None]:
    """A tmpfs of ``size`` mounted at ``path``: a disk that really fills up (ENOSPC). Needs the
    right to mount (root); skips the test otherwise."""
    mounted = _run("mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path))
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small file system here: mount says {mounted.stderr.strip()}")
    try:
        yield
    finally:
        _unmount(path)


def _unmount(path: Path) -> None:
    # Lazily: connections this process still pools keep files open on it.
    _run("umount", "-l", str(path))


_PACKAGE = os.path.dirname(cachekeeper.__file__) + os.sep


@contextmanager
def at_lines(actions: Mapping[int, Callable[[], None]], lines: list[str] | None = None) -> Iterator[None]:
    """Run each action just before the line of cachekeeper's own code that this thread executes
    inside the block with that number (counted from 1); ``lines`` collects every such line as
    ``file:function:line``. Another process acting at that very moment, without hooks in the code."""
    count = 0

    def on_call(frame, event, arg):
        return on_line if frame.f_code.co_filename.startswith(_PACKAGE) else None

    def on_line(frame, event, arg):
        nonlocal count
        if event == "line":
            count += 1
            if lines is not None:
                lines.append(f"{frame.f_code.co_filename[len(_PACKAGE) :]}:{frame.f_code.co_name}:{frame.f_lineno}")
            if count in actions:
                actions[count]()
        return on_line

    previous = sys.gettrace()
    sys.settrace(on_call)
    try:
        yield
    finally:
        sys.settrace(previous)
