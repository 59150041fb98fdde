"""What the commands print: rich tables and progress bars on a terminal, JSON with ``--json``.

rich loads on first use, so that ``--json`` output never pays for it.
"""

from __future__ import annotations

import json
import sys
from typing import Any


class _LazyConsole:
    """rich's Console, made on first use."""

    def __init__(self, **options: Any) -> None:
        self._options = options
        self._console: Any = None

    def __getattr__(self, name: str) -> Any:
        if self._console is None:
            from rich.console import Console

            self._console = Console(**self._options)
        return getattr(self._console, name)


console = _LazyConsole(highlight=False, soft_wrap=True)
stderr = _LazyConsole(stderr=True, highlight=False, soft_wrap=True)


def print_json(data: Any) -> None:
    """Keys sorted; indented for a person at a terminal, one line when piped."""
    import orjson

    indent = sys.stdout.isatty()
    try:
        options = orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS | (orjson.OPT_INDENT_2 if indent else 0)
        text = orjson.dumps(data, default=str, option=options).decode()
    except TypeError:  # orjson refuses integers beyond 64 bits, which an engine argument may be
        text = json.dumps(data, indent=2 if indent else None, sort_keys=True, default=str)
    print(text)


def progress(description: str, total: int | None, *, quiet: bool, in_bytes: bool = False) -> Any:
    """A rich progress bar on a terminal; nothing with --json or when output is piped."""
    return _Progress(description, total, quiet or not stderr.is_terminal, in_bytes)


class _Progress:
    """Context manager yielding ``advance(n)``, whose ``total(n)`` sets the bar's length."""

    def __init__(self, description: str, total: int | None, quiet: bool, in_bytes: bool) -> None:
        self._description, self._total, self._quiet, self._in_bytes = description, total, quiet, in_bytes
        self._bar: Any = None
        self._task: Any = None

    def __enter__(self) -> _Progress:
        if not self._quiet:
            from rich.progress import (
                BarColumn, DownloadColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn,
            )  # fmt: skip

            amount = DownloadColumn() if self._in_bytes else MofNCompleteColumn()
            self._bar = Progress(TextColumn("{task.description}"), BarColumn(), amount, TimeRemainingColumn(),
                                 console=stderr, transient=True)  # fmt: skip
            self._bar.__enter__()
            self._task = self._bar.add_task(self._description, total=self._total)
        return self

    def __call__(self, amount: int) -> None:
        if self._bar is not None:
            self._bar.advance(self._task, amount)

    def total(self, amount: int) -> None:
        if self._bar is not None:
            self._bar.update(self._task, total=amount)

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)


def make_table(*columns: Any, **options: Any) -> Any:
    from rich.table import Table

    return Table(*columns, **options)


def make_column(header: str, **options: Any) -> Any:
    from rich.table import Column

    return Column(header, **options)


def key_column() -> Any:
    return make_column("key", no_wrap=True, overflow="fold")  # a key is copied and pasted: never cut it


def plain(value: Any) -> Any:
    return [plain(item) for item in value] if isinstance(value, tuple) else value


def show(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(plain(value))


def one_line(message: str) -> str:
    return " ".join(message.split())
