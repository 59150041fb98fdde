"""Commands that keep a cache within bounds: list, prune, pin, fold, and the Hub's revisions."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from .. import errors
from ..errors import UsageError
from ..units import format_bytes, parse_duration
from . import render
from .app import JsonOption, TargetOption, app, resolve_target, resolve_targets, settings_of
from .render import print_json, progress

KeepEventsOption = Annotated[
    str | None,
    typer.Option(
        "--keep-events",
        envvar="CACHEKEEPER_KEEP_EVENTS",
        help="Keep each event (hit, miss, build, prune) one by one this long, then only as daily counts "
        "per layer and model: stats keeps their totals, but boot times need them one by one. Default: 90d.",
        show_default=False,
    ),
]


@app.command("ls")
def list_artifacts(
    ctx: typer.Context,
    layer: Annotated[str | None, typer.Option(help="Only this layer.")] = None,
    model: Annotated[str | None, typer.Option(help="Only this model (org/name).")] = None,
    limit: Annotated[
        int | None, typer.Option(min=1, help="Only the N most recently used artifacts.", show_default=False)
    ] = None,
    target: TargetOption = None,
    as_json: JsonOption = False,
) -> None:
    """List the artifacts the manifest knows, most recently used first, then the quarantined ones,
    then what each layer holds and how many files each root holds against its budget.

    The table is printed a page at a time as the rows are read, so the first rows show at once
    however many there are; pipe it to head or less as you like.
    """
    from ..budget import RootFiles, files_per_root
    from ..manifest import Stored
    from ..quarantine import listed
    from ..scope import Scope
    from ..target import DEFAULT_FILE_BUDGET

    scope = Scope.of(layer=layer, model=model)
    found = resolve_target(target)
    cache = settings_of(ctx).open(found)
    moved = listed(cache.manifest, layer=scope.layer, model=scope.model)

    def totals() -> tuple[dict[str, Stored], tuple[RootFiles, ...]]:
        """Counted after the rows are shown: the first rows show at once."""
        layers = Stored.per_layer(cache.manifest.stored(layer=scope.layer, model=scope.model))
        return layers, files_per_root(cache.manifest, cache.roots, found.max_files if found else DEFAULT_FILE_BUDGET)

    if as_json:
        artifacts = cache.manifest.summaries(layer=scope.layer, model=scope.model, limit=limit)
        layers, roots = totals()
        print_json(
            {
                "artifacts": [a.to_json(cache.roots.for_layer(a.layer).path) for a in artifacts],
                "quarantined": [entry.summary() for entry in moved],
                "layers": {name: stored.to_json() for name, stored in layers.items()},
                "roots": [root.to_json() for root in roots],
            }
        )
    else:
        render.listing(cache.manifest.summary_pages(layer=scope.layer, model=scope.model, limit=limit), limit=limit)
        render.quarantined(moved)
        render.totals(*totals())


@app.command()
def prune(
    ctx: typer.Context,
    older_than: Annotated[
        str | None,
        typer.Option(help="Remove artifacts not used for this long: 90m, 12h, 7d, 2w.", show_default=False),
    ] = None,
    stale: Annotated[
        bool, typer.Option("--stale", help="Remove artifacts whose key no target derives any more (see --target).")
    ] = False,
    keep_last: Annotated[
        int | None,
        typer.Option(help="Keep the N most recently used per model and layer; remove the rest.", show_default=False),
    ] = None,
    max_size: Annotated[
        str | None,
        typer.Option(
            help="Remove the least recently used until what is in scope fits: 500GB, 2TiB.", show_default=False
        ),
    ] = None,
    max_files: Annotated[
        int | None,
        typer.Option(
            help="Remove the least recently used until what is in scope holds at most N files "
            "(a Modal v1 Volume allows 500,000 and advises 50,000).",
            show_default=False,
        ),
    ] = None,
    layer: Annotated[str | None, typer.Option(help="Only this layer.")] = None,
    model: Annotated[str | None, typer.Option(help="Only this model (org/name).")] = None,
    key: Annotated[list[str] | None, typer.Option("--key", help="Only this key (repeatable).")] = None,
    quarantined: Annotated[
        bool,
        typer.Option(
            "--quarantined",
            help="Remove quarantined artifacts instead (in the scope given; with --older-than, those "
            "quarantined longer ago).",
        ),
    ] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would be removed; remove nothing.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    target: Annotated[
        list[Path] | None,
        typer.Option(
            "--target",
            "-t",
            help="A target still deployed (repeatable). Default: ./cachekeeper.toml, else ./pyproject.toml.",
        ),
    ] = None,
    keep_events: KeepEventsOption = None,
    as_json: JsonOption = False,
) -> None:
    """Remove artifacts by age, staleness, count, or size and file budgets; never what is pinned,
    in use, or what a live snapshot was built from. Policies combine: an artifact goes when it meets
    every criterion given, and --keep-last is a floor that --max-size and --max-files respect too.

    Unless --dry-run, it first tidies the state as `cachekeeper sync` does.
    """
    from ..prune import PrunePolicy, execute_prune, plan_prune
    from ..units import parse_size

    if quarantined:
        if stale or keep_last is not None or max_size is not None or max_files is not None:
            raise UsageError(
                "--quarantined removes quarantined artifacts only: "
                "run --stale, --keep-last, --max-size or --max-files apart"
            )
        _prune_quarantined(ctx, older_than, layer, model, key or [], dry_run, yes, as_json)
        return
    targets = resolve_targets(target)
    policy = PrunePolicy.of(
        older_than=parse_duration(older_than) if older_than is not None else None,
        stale=stale,
        keep_last=keep_last,
        max_size=parse_size(max_size) if max_size is not None else None,
        max_files=max_files,
        layer=layer,
        model=model,
        keys=key or (),
        targets=targets,
    )
    window = _keep_events(keep_events)
    cache = settings_of(ctx).open(targets[0] if targets else None, fold=False)
    folded = cache.fold(writing=True, tidy=not dry_run, keep_events=window)
    plan = plan_prune(cache.manifest, cache.roots, policy)
    if dry_run:
        if as_json:
            print_json(plan.to_json())
        else:
            render.prune(plan)
        return
    if plan.removals and not yes and not as_json and sys.stdin.isatty():
        render.prune(plan)
        if not typer.confirm(f"Remove {len(plan.removals)} artifact(s), {format_bytes(plan.bytes)}?"):
            raise typer.Exit(errors.NOT_READY)
    with progress("Removing", len(plan.removals), quiet=as_json) as advance:
        # With nothing planned it still runs: every prune clears what killed processes left.
        result = execute_prune(plan, cache.manifest, cache.roots, progress=lambda _: advance(1))
    tidied = folded.tidied if folded is not None else None
    if as_json:
        print_json({**result.to_json(), "tidied": tidied.to_json() if tidied is not None else None})
    else:
        render.prune(plan, result)
        if tidied is not None:
            render.tidied(tidied)


def _prune_quarantined(
    ctx: typer.Context,
    older_than: str | None,
    layer: str | None,
    model: str | None,
    keys: list[str],
    dry_run: bool,
    yes: bool,
    as_json: bool,
) -> None:
    from ..quarantine import remove_quarantined
    from ..scope import Scope

    scope = Scope.of(layer=layer, model=model, keys=keys)
    age = parse_duration(older_than) if older_than is not None else None
    cache = settings_of(ctx).open(resolve_target(None), writing=not dry_run)
    plan = remove_quarantined(cache.manifest, cache.roots, scope=scope, older_than=age, dry_run=True)
    if not dry_run:
        if plan.removed and not yes and not as_json and sys.stdin.isatty():
            render.quarantine_removal(plan)
            question = f"Remove {len(plan.removed)} quarantined artifact(s), {format_bytes(plan.bytes)}?"
            if not typer.confirm(question):
                raise typer.Exit(errors.NOT_READY)
        plan = remove_quarantined(cache.manifest, cache.roots, scope=scope, older_than=age)
    if as_json:
        print_json(plan.to_json())
    else:
        render.quarantine_removal(plan)


@app.command("init")
def init_command(ctx: typer.Context, target: TargetOption = None, as_json: JsonOption = False) -> None:
    """Make the cache root (and the target's layer roots) a cache root cachekeeper may prune.

    The first boot does this itself; a root made by an older cachekeeper needs it once. / and
    home directories are refused.
    """
    roots = settings_of(ctx).roots(resolve_target(target))
    made = {str(root.path): root.initialise() for root in roots.all()}
    if as_json:
        print_json({"roots": [{"path": path, "marked_now": now} for path, now in made.items()]})
    else:
        for path, now in made.items():
            render.console.print(f"{path}: {'marked as a cache root' if now else 'already a cache root'}")


@app.command("sync")
def sync_command(
    ctx: typer.Context,
    keep_events: KeepEventsOption = None,
    target: TargetOption = None,
    as_json: JsonOption = False,
) -> None:
    """Fold what containers recorded (journals, sidecars) into the manifest, and keep the state
    bounded: remove the use records of stopped processes, compact the journals of past days into
    one file a day, and summarise events older than --keep-events into daily counts."""
    window = _keep_events(keep_events)
    cache = settings_of(ctx).open(resolve_target(target), fold=False)
    report = cache.fold(writing=True, tidy=True, keep_events=window)
    assert report is not None
    if as_json:
        print_json(report.to_json())
    else:
        render.synced(report)


def _keep_events(text: str | None) -> float:
    from ..sync import KEEP_EVENTS

    return KEEP_EVENTS if text is None else parse_duration(text)


@app.command()
def pin(
    ctx: typer.Context,
    key: Annotated[str, typer.Argument(help="The key to keep whatever prune's policy says.", show_default=False)],
    target: TargetOption = None,
    as_json: JsonOption = False,
) -> None:
    """Keep an artifact: no prune removes a pinned key until it is unpinned."""
    _set_pinned(ctx, key, True, target, as_json)


@app.command()
def unpin(
    ctx: typer.Context,
    key: Annotated[str, typer.Argument(help="A pinned key.", show_default=False)],
    target: TargetOption = None,
    as_json: JsonOption = False,
) -> None:
    """Let prune's policies decide about an artifact again."""
    _set_pinned(ctx, key, False, target, as_json)


def _set_pinned(ctx: typer.Context, key: str, pinned: bool, target: Path | None, as_json: bool) -> None:
    from ..keys import parse_key
    from ..pins import set_pinned

    parse_key(key)
    cache = settings_of(ctx).open(resolve_target(target), fold=False)
    artifact = set_pinned(cache.manifest, cache.roots, key, pinned=pinned)
    if as_json:
        print_json({"key": key, "pinned": pinned, "layer": artifact.layer, "model": artifact.model})
    else:
        render.console.print(f"{'Pinned' if pinned else 'Unpinned'} {key}")


@app.command("weights")
def weights_command(ctx: typer.Context, target: TargetOption = None, as_json: JsonOption = False) -> None:
    """Every model revision in the weights layer's Hugging Face cache, recorded or not, as
    huggingface_hub scans it. Remove them with `prune --layer weights` (or `--key`)."""
    from ..hub import list_revisions

    cache = settings_of(ctx).open(resolve_target(target))
    revisions = list_revisions(cache.roots, cache.manifest)
    if as_json:
        print_json({"revisions": [revision.to_json() for revision in revisions]})
    else:
        render.weights(revisions, cache.roots.hf_cache())
