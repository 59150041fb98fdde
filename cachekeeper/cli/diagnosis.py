"""Commands that look into a cache: verify it, repair its manifest, inspect one artifact, count."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from .. import errors
from ..errors import UsageError
from ..units import parse_duration
from . import render
from .app import JsonOption, TargetOption, app, resolve_target, settings_of
from .render import print_json, progress


@app.command("verify")
def verify_command(
    ctx: typer.Context,
    keys: Annotated[
        list[str] | None, typer.Argument(help="Only these keys (default: all).", show_default=False)
    ] = None,
    layer: Annotated[str | None, typer.Option(help="Only this layer.")] = None,
    model: Annotated[str | None, typer.Option(help="Only this model (org/name).")] = None,
    target: TargetOption = None,
    as_json: JsonOption = False,
) -> None:
    """Check artifacts against the sizes and checksums recorded at publish; find orphans and ghosts.

    Exit 0 when nothing is wrong (new files in a warm artifact are growth, not damage), 1 when
    something is corrupt, missing, orphaned, ghostly or unindexed.
    """
    from ..scope import Scope
    from ..verify import verify

    scope = Scope.of(layer=layer, model=model, keys=keys or ())
    found = resolve_target(target)
    cache = settings_of(ctx).open(found)
    custom = [each.name for each in found.layers] if found is not None else []
    with progress("Verifying", None, quiet=as_json, in_bytes=True) as advance:
        report = verify(cache.manifest, cache.roots, scope=scope, layers=custom, progress=advance, total=advance.total)
    if as_json:
        print_json(report.to_json())
    else:
        render.verification(report)
    raise typer.Exit(errors.OK if report.ok else errors.NOT_READY)


@app.command("doctor")
def doctor_command(
    ctx: typer.Context,
    max_files: Annotated[
        int | None,
        typer.Option(
            help="Warn when a root holds more files than this. Default: the target's [budget] files, "
            "else 50,000 (what Modal advises for a Volume).",
            show_default=False,
        ),
    ] = None,
    target: TargetOption = None,
    as_json: JsonOption = False,
) -> None:
    """Rebuild a lost or damaged manifest from the sidecars and journals, and count each root's
    files against its budget. Deletes no artifact: a damaged SQLite manifest is moved aside, never
    removed."""
    from ..doctor import doctor
    from ..target import DEFAULT_FILE_BUDGET

    if max_files is not None and max_files < 1:
        raise UsageError(f"--max-files must be at least 1, not {max_files}")
    settings = settings_of(ctx)
    found = resolve_target(target)
    budget = max_files or (found.max_files if found is not None else DEFAULT_FILE_BUDGET)
    roots = settings.roots(found)
    with progress("Reading", None, quiet=as_json) as advance:
        _, report = doctor(settings.url(roots), roots, max_files=budget, progress=advance, total=advance.total)
    if as_json:
        print_json(report.to_json())
    else:
        render.doctored(report)


@app.command("inspect")
def inspect_command(
    ctx: typer.Context,
    key: Annotated[str, typer.Argument(help="The artifact's key.", show_default=False)],
    target: TargetOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show one artifact: its record, pins and uses, and the caches vLLM and torch keep inside it,
    with the factors vLLM hashed, so that a miss inside our key shows too."""
    from ..inspection import inspect_artifact
    from ..keys import parse_key

    parse_key(key)
    cache = settings_of(ctx).open(resolve_target(target))
    found = inspect_artifact(cache.manifest, cache.roots, key)
    if as_json:
        print_json(found.to_json())
    else:
        render.inspection(found)


@app.command("stats")
def stats_command(
    ctx: typer.Context,
    since: Annotated[str | None, typer.Option(help="Only this recent period: 24h, 7d, 4w.", show_default=False)] = None,
    target: TargetOption = None,
    as_json: JsonOption = False,
) -> None:
    """Hits, misses, builds, bytes and files per layer and model, the files per root, and the boot
    time the cache saved.

    Events older than the window `sync` keeps them in (--keep-events, 90 days by default) are kept
    as daily counts: hits, misses, builds and bytes per layer and model keep their totals (whole
    UTC days), but boots, boot times and the time saved count only the boots still recorded one
    by one.
    """
    from ..stats import stats
    from ..target import DEFAULT_FILE_BUDGET

    period = parse_duration(since) if since is not None else None
    found = resolve_target(target)
    cache = settings_of(ctx).open(found)
    now = time.time()
    since_at = now - period if period is not None else None
    budget = found.max_files if found is not None else DEFAULT_FILE_BUDGET
    report = stats(cache.manifest, since=since_at, now=now, roots=cache.roots, max_files=budget)
    if as_json:
        print_json(report.to_json())
    else:
        render.statistics(report)
