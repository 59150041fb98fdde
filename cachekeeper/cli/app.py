"""The ``cachekeeper`` application: its global options, what every command opens, and the one
place where failures become a line on stderr and an exit code."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from .. import errors
from ..errors import CachekeeperError, UsageError
from .render import one_line

try:  # typer 0.20 and later carry their own copy of click
    from typer._click.exceptions import ClickException
except ImportError:  # older typer, on top of click itself: the same class under its own name
    from click import ClickException  # type: ignore[assignment]

if TYPE_CHECKING:
    from ..cache import Cache
    from ..store import Roots
    from ..target import Target

app = typer.Typer(
    name="cachekeeper",
    help="Cache keys, a manifest and housekeeping for LLM-server caches on serverless GPUs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

TargetOption = Annotated[
    Path | None,
    typer.Option("--target", "-t", help="Target file. Default: ./cachekeeper.toml, else ./pyproject.toml."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON on stdout instead of tables.")]


@dataclass
class Settings:
    root: Path
    db: str | None

    def roots(self, target: Target | None) -> Roots:
        from ..store import Roots

        return Roots.at(self.root, target.roots if target is not None else None)

    def url(self, roots: Roots) -> str:
        from ..manifest import default_url

        return self.db or default_url(roots)

    def open(self, target: Target | None, *, fold: bool = True, writing: bool = False) -> Cache:
        """The cache the command works on; see ``cachekeeper.cache.open_cache``."""
        from ..cache import open_cache

        return open_cache(self.root, db=self.db, target=target, fold=fold, writing=writing)


@app.callback()
def _global(
    ctx: typer.Context,
    root: Annotated[
        str | None,
        typer.Option(help="Cache root. Default: $CACHEKEEPER_ROOT, else the user cache directory.", show_default=False),
    ] = None,
    db: Annotated[
        str | None,
        typer.Option(
            envvar="CACHEKEEPER_DB",
            help="Manifest database URL. Default: sqlite:///ROOT/.cachekeeper/manifest.db.",
            show_default=False,
        ),
    ] = None,
) -> None:
    from ..store import default_root

    if root is not None and (not root.strip() or "\0" in root):
        raise UsageError(f"--root {root!r} names no directory: pass one, or leave it out for $CACHEKEEPER_ROOT")
    path = Path(root).expanduser() if root is not None else default_root()
    if path.exists() and not path.is_dir():
        raise UsageError(f"the cache root {path} is not a directory")
    ctx.obj = Settings(root=path, db=db or None)


def settings_of(ctx: typer.Context) -> Settings:
    settings = ctx.find_root().obj
    assert isinstance(settings, Settings), "the global options run before every command"
    return settings


def resolve_target(path: Path | None, *, required: bool = False) -> Target | None:
    """The target at ``path``, else the one found here; a usage error if ``required`` and none."""
    from ..target import find_target

    target = find_target(path)
    if target is None and required:
        raise UsageError("no target: pass --target FILE, or create cachekeeper.toml here (see README)")
    return target


def resolve_targets(paths: list[Path] | None) -> list[Target]:
    if paths:
        return [target for path in paths if (target := resolve_target(path, required=True)) is not None]
    found = resolve_target(None)
    return [found] if found is not None else []


def main(argv: list[str] | None = None) -> None:
    """Entry point: one line on stderr and a meaningful exit code for every failure."""
    command = typer.main.get_command(app)
    try:
        code = command.main(args=argv, prog_name="cachekeeper", standalone_mode=False)
    except ClickException as error:  # a bad option or argument
        context = getattr(error, "ctx", None)
        where = context.command_path if context is not None else "cachekeeper"
        print(f"error: {one_line(error.format_message())} (see `{where} --help`)", file=sys.stderr)
        code = errors.USAGE
    except typer.Abort:
        print("aborted", file=sys.stderr)
        code = errors.INTERRUPTED
    except CachekeeperError as error:
        print(f"error: {one_line(str(error))}", file=sys.stderr)
        code = error.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = errors.INTERRUPTED
    except OSError as error:  # the file system said no: full, read-only, not a directory
        where = f"{error.filename}: " if error.filename else ""
        print(f"error: {one_line(f'{where}{error.strerror or error}')}", file=sys.stderr)
        code = errors.NOT_READY
    except Exception as error:  # a bug: say so in one line; the traceback is one variable away
        if os.environ.get("CACHEKEEPER_DEBUG"):
            raise
        print(
            f"unexpected error: {type(error).__name__}: {one_line(str(error))} "
            "(set CACHEKEEPER_DEBUG=1 to see the traceback)",
            file=sys.stderr,
        )
        code = errors.UNEXPECTED
    sys.exit(code if isinstance(code, int) else 0)
