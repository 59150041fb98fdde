"""Commands that keep a cache: list, prune, pin, verify, repair, look inside, count."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from .. import errors
from ..units import format_age, format_bytes, parse_duration
from .app import JsonOption, TargetOption, app, opened, resolve_target, resolve_targets, settings_of
from .output import console, key_column, make_column, make_table, plain, print_json, progress, show


# --- ls ---------------------------------------------------------------------------------------


@app.command("ls")
def list_artifacts(
    ctx: typer.Context,
    layer: Annotated[Optional[str], typer.Option(help="Only this layer.")] = None,
    model: Annotated[Optional[str], typer.Option(help="Only this model (org/name).")] = None,
    target: TargetOption = None,
    as_json: JsonOption = False,
) -> None:
    """List the artifacts the manifest knows, most recently used first."""
    from ..layers import check_scope

    check_scope(layer, model)
    roots, manifest = opened(ctx, target)
    artifacts = manifest.summaries(layer=layer, model=model)
    if as_json:
        layer_dirs = {layer: str(roots.for_layer(layer).path) for layer in {a.layer for a in artifacts}}
        print_json(
            {
                "artifacts": [
                    {
                        "key": a.key, "layer": a.layer, "model": a.model, "status": a.state, "bytes": a.bytes,
                        "files": a.files, "created_at": a.created_at, "last_used_at": a.last_used_at,
                        "path": os.path.join(layer_dirs[a.layer], a.relpath),
                    }  # fmt: skip
                    for a in artifacts
                ]
            }
        )
        return
    now = time.time()
    deleting = any(a.state == "deleting" for a in artifacts)
    columns = [key_column(), "model", make_column("size", justify="right"), "last used"]
    table = make_table(*columns, *(["status"] if deleting else []))
    for a in artifacts:
        row = [a.key, a.model if a.model != "none" else "-", format_bytes(a.bytes), format_age(now - a.last_used_at)]
        table.add_row(*row, *(["[red]deleting[/]" if a.state == "deleting" else "published"] if deleting else []))
    console.print(table)
    total = sum(a.bytes for a in artifacts)
    console.print(f"{len(artifacts)} artifact(s), {format_bytes(total)}")


# --- prune ------------------------------------------------------------------------------------


@app.command()
def prune(
    ctx: typer.Context,
    older_than: Annotated[
        Optional[str], typer.Option(help="Remove artifacts not used for this long: 90m, 12h, 7d, 2w.", show_default=False)
    ] = None,
    stale: Annotated[
        bool, typer.Option("--stale", help="Remove artifacts whose key no target derives any more (see --target).")
    ] = False,
    keep_last: Annotated[
        Optional[int],
        typer.Option(help="Keep the N most recently used per model and layer; remove the rest.", show_default=False),
    ] = None,
    max_size: Annotated[
        Optional[str],
        typer.Option(help="Remove the least recently used until what is in scope fits: 500GB, 2TiB.", show_default=False),
    ] = None,
    layer: Annotated[Optional[str], typer.Option(help="Only this layer.")] = None,
    model: Annotated[Optional[str], typer.Option(help="Only this model (org/name).")] = None,
    key: Annotated[Optional[list[str]], typer.Option("--key", help="Only this key (repeatable).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would be removed; remove nothing.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    target: Annotated[
        Optional[list[Path]],
        typer.Option(
            "--target", "-t",
            help="A target still deployed (repeatable). Default: ./cachekeeper.toml, else ./pyproject.toml.",
        ),
    ] = None,  # fmt: skip
    as_json: JsonOption = False,
) -> None:
    """Remove artifacts by age, staleness, count or size budget; never what is pinned, in use, or
    what a live snapshot was built from. Policies combine: an artifact goes when it meets every
    criterion given, and --keep-last is a floor that --max-size respects too.
    """
    from ..prune import execute_prune, plan_prune
    from ..sync import sync
    from ..units import parse_size

    seconds = parse_duration(older_than) if older_than is not None else None
    budget = parse_size(max_size) if max_size is not None else None
    settings = settings_of(ctx)
    targets = resolve_targets(target)
    roots = settings.roots(targets[0] if targets else None)
    manifest = settings.manifest(roots)
    sync(manifest, roots)
    plan = plan_prune(
        manifest, roots=roots, older_than=seconds, stale=stale, keep_last=keep_last, max_size=budget,
        layer=layer, model=model, keys=tuple(key or ()), targets=targets,
    )  # fmt: skip
    if dry_run:
        _print_prune(plan, plan.removals, (), dry_run=True, as_json=as_json)
        return
    if plan.removals and not yes and not as_json and sys.stdin.isatty():
        _print_prune(plan, plan.removals, (), dry_run=True, as_json=False)
        if not typer.confirm(f"Remove {len(plan.removals)} artifact(s), {format_bytes(plan.bytes)}?"):
            raise typer.Exit(errors.NOT_READY)
    with progress("Removing", len(plan.removals), quiet=as_json) as advance:
        # With nothing planned it still runs: every prune clears what killed processes left.
        result = execute_prune(plan, manifest, roots, progress=lambda _: advance(1))
    _print_prune(plan, result.removed, result.skipped, dry_run=False, as_json=as_json, leftovers=result.leftovers)


def _print_prune(plan: Any, removed: Any, skipped: Any, *, dry_run: bool, as_json: bool, leftovers: Any = None) -> None:
    freed = plan.bytes if dry_run else sum(a.bytes for a in removed)
    if as_json:
        data = {
            "dry_run": dry_run,
            "removed": [{"key": a.key, "layer": a.layer, "model": a.model, "bytes": a.bytes} for a in removed],
            "kept": [{"key": a.key, "layer": a.layer, "model": a.model, "bytes": a.bytes} for a in plan.kept],
            "reasons": {key: list(reasons) for key, reasons in plan.reasons.items()},
            "skipped": [{"key": a.key, "reason": reason} for a, reason in skipped],
            "bytes": freed,
            "over_budget": plan.over_budget,
        }
        if leftovers is not None:
            data["leftovers"] = {
                "partial_builds": list(leftovers.partial_builds),
                "temporary_files": leftovers.temporary_files,
                "leases": leftovers.leases,
            }
        print_json(data)
        return
    verb = "would remove" if dry_run else "removed"
    for artifact in removed:
        why = "; ".join(plan.reasons.get(artifact.key, ()))
        console.print(f"{verb} {artifact.key} ({format_bytes(artifact.bytes)}): {why}")
    for artifact in plan.kept:
        console.print(f"[green]keep[/] {artifact.key}: {'; '.join(plan.reasons.get(artifact.key, ()))}")
    for artifact, reason in skipped:
        console.print(f"[yellow]kept[/] {artifact.key}: {reason}")
    if plan.over_budget:
        console.print(f"[yellow]Still {format_bytes(plan.over_budget)} over the size budget:[/] the rest must stay.")
    console.print(f"{'Would free' if dry_run else 'Freed'} {format_bytes(freed)} in {len(removed)} artifact(s).")
    if leftovers is not None and (leftovers.partial_builds or leftovers.temporary_files or leftovers.leases):
        console.print(
            f"Cleared what killed processes left: {len(leftovers.partial_builds)} unfinished build(s), "
            f"{leftovers.temporary_files} temporary file(s), {leftovers.leases} dead lease(s)."
        )


# --- sync -------------------------------------------------------------------------------------


@app.command("sync")
def sync_command(ctx: typer.Context, target: TargetOption = None, as_json: JsonOption = False) -> None:
    """Fold what containers recorded (journals, sidecars) into the manifest."""
    from ..sync import sync

    settings = settings_of(ctx)
    roots = settings.roots(resolve_target(target))
    report = sync(settings.manifest(roots), roots)
    if as_json:
        print_json(
            {"journals": report.journals, "records": report.records, "artifacts": report.artifacts,
             "unreadable_lines": report.unreadable_lines}  # fmt: skip
        )
        return
    console.print(
        f"Folded {report.records} record(s) from {report.journals} journal(s); "
        f"{report.artifacts} new artifact(s)."
        + (f" Skipped {report.unreadable_lines} unreadable line(s)." if report.unreadable_lines else "")
    )


# --- pin / unpin -----------------------------------------------------------------------------


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
    from ..prune import set_pinned

    settings = settings_of(ctx)
    roots = settings.roots(resolve_target(target))
    artifact = set_pinned(settings.manifest(roots), roots, key, pinned=pinned)
    if as_json:
        print_json({"key": key, "pinned": pinned, "layer": artifact.layer, "model": artifact.model})
    else:
        console.print(f"{'Pinned' if pinned else 'Unpinned'} {key}")


# --- verify -----------------------------------------------------------------------------------


@app.command("verify")
def verify_command(
    ctx: typer.Context,
    keys: Annotated[Optional[list[str]], typer.Argument(help="Only these keys (default: all).", show_default=False)] = None,
    layer: Annotated[Optional[str], typer.Option(help="Only this layer.")] = None,
    model: Annotated[Optional[str], typer.Option(help="Only this model (org/name).")] = None,
    target: TargetOption = None,
    as_json: JsonOption = False,
) -> None:
    """Check artifacts against the sizes and checksums recorded at publish; find orphans and ghosts.

    Exit 0 when nothing is wrong (new files in a warm artifact are growth, not damage), 1 when
    something is corrupt, missing, orphaned, ghostly or unindexed.
    """
    from ..sync import refresh
    from ..verify import verify

    settings = settings_of(ctx)
    found = resolve_target(target)
    roots = settings.roots(found)
    manifest = settings.manifest(roots)
    refresh(manifest, roots)
    custom = [layer.name for layer in found.layers] if found is not None else []
    with progress("Verifying", None, quiet=as_json, in_bytes=True) as advance:
        report = verify(
            manifest, roots, layer=layer, model=model, keys=tuple(keys or ()), layers=custom,
            progress=advance, total=advance.total,
        )  # fmt: skip
    if as_json:
        print_json(
            {
                "ok": report.ok,
                "checked": report.checked,
                "hashed_bytes": report.hashed_bytes,
                "findings": [
                    {"kind": f.kind, "problem": f.problem, "layer": f.layer, "key": f.key, "path": str(f.path),
                     "detail": f.detail, "files": list(f.files)}  # fmt: skip
                    for f in report.findings
                ],
            }
        )
    else:
        table = make_table("finding", "layer", make_column("artifact", overflow="fold"), "detail")
        for f in report.findings:
            style = "red" if f.problem else "cyan"
            shown = ", ".join(f.files[:3]) + (f" (+{len(f.files) - 3})" if len(f.files) > 3 else "")
            table.add_row(f"[{style}]{f.kind}[/]", f.layer, f.key or str(f.path), f.detail + (f": {shown}" if shown else ""))
        if report.findings:
            console.print(table)
        verdict = "[green]ok[/]" if report.ok else "[red]problems found[/]"
        console.print(f"Checked {report.checked} artifact(s), read {format_bytes(report.hashed_bytes)}: {verdict}")
    raise typer.Exit(errors.OK if report.ok else errors.NOT_READY)


# --- doctor -----------------------------------------------------------------------------------


@app.command("doctor")
def doctor_command(ctx: typer.Context, target: TargetOption = None, as_json: JsonOption = False) -> None:
    """Rebuild a lost or damaged manifest from the sidecars and journals. Deletes no artifact:
    a damaged SQLite manifest is moved aside, never removed."""
    from ..doctor import doctor
    from ..manifest import default_url

    settings = settings_of(ctx)
    roots = settings.roots(resolve_target(target))
    with progress("Reading", None, quiet=as_json) as advance:
        _, report = doctor(settings.db or default_url(roots), roots, progress=advance, total=advance.total)
    if as_json:
        print_json(
            {
                "manifest": report.manifest, "damage": report.damage,
                "moved_to": None if report.moved_to is None else str(report.moved_to),
                "sidecars": report.sidecars, "indexed": list(report.indexed), "forgotten": list(report.forgotten),
                "unreadable": [str(p) for p in report.unreadable], "unmounted": list(report.unmounted),
                "unfinished": list(report.unfinished), "journals": report.journals, "records": report.records,
            }  # fmt: skip
        )
        return
    if report.manifest == "created":
        console.print("There was no manifest: built a new one.")
    elif report.manifest == "replaced":
        console.print(f"[yellow]The manifest was damaged[/] ({report.damage}): moved it to {report.moved_to}.")
    console.print(
        f"Read {report.sidecars} sidecar(s) and {report.journals} journal(s): indexed {len(report.indexed)} "
        f"artifact(s), applied {report.records} record(s), forgot {len(report.forgotten)} row(s) whose sidecar is gone."
    )
    for key in report.forgotten:
        console.print(f"  forgot {key}")
    for path in report.unreadable:
        console.print(f"[yellow]unreadable sidecar[/] {path} (left in place: no boot trusts it)")
    for layer in report.unmounted:
        console.print(f"[yellow]{layer}[/]: its root is not here; its rows were left alone")
    if report.unfinished:
        console.print(f"{len(report.unfinished)} interrupted removal(s): the next `cachekeeper prune` finishes them.")
    console.print("[green]The manifest agrees with the root.[/]" if report.changed else "[green]Nothing to fix.[/]")


# --- inspect ----------------------------------------------------------------------------------


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

    roots, manifest = opened(ctx, target)
    found = inspect_artifact(manifest, roots, key)
    a = found.artifact
    if as_json:
        print_json(
            {
                "key": a.key, "layer": a.layer, "model": a.model, "path": str(found.path), "bytes": a.bytes,
                "files": a.files, "created_at": a.created_at, "last_used_at": a.last_used_at, "builder": a.builder,
                "depends_on": list(a.depends_on), "checksum": a.checksum, "pinned": found.pinned,
                "users": [u.owner for u in found.users], "dependents": list(found.dependents),
                "facts": {name: plain(value) for name, value in a.facts.items()},
                "vllm": [
                    {"hash": d.hash, "rank": d.rank, "prefix": d.prefix, "path": d.relpath, "files": d.files,
                     "bytes": d.bytes, "factors": d.factors}
                    for d in found.vllm
                ],
                "aot": [{"hash": d.hash, "path": d.relpath, "ranks": list(d.ranks), "files": d.files,
                         "bytes": d.bytes} for d in found.aot],
                "inductor": [{"path": d.relpath, "fxgraph": d.fxgraph, "aotautograd": d.aotautograd,
                              "files": d.files, "bytes": d.bytes} for d in found.inductor],
                "triton_kernels": found.triton_kernels,
                "factor_changes": [
                    {"rank": c.rank, "prefix": c.prefix, "old_hash": c.old_hash, "new_hash": c.new_hash,
                     "factor": c.factor, "old": c.old, "new": c.new}
                    for c in found.factor_changes
                ],
            }  # fmt: skip
        )
        return
    now = time.time()
    console.print(f"[bold]{a.key}[/]  {a.layer}, {a.model}")
    console.print(f"  {found.path}")
    console.print(
        f"  {format_bytes(a.bytes)} in {a.files} file(s) at publish; built {format_age(now - a.created_at)} "
        f"by {a.builder}; last used {format_age(now - a.last_used_at)}"
    )
    if found.pinned:
        console.print("  [green]pinned[/]")
    for use in found.users:
        console.print(f"  in use by {use.owner}")
    for dependent in found.dependents:
        console.print(f"  the live snapshot {dependent} was built from it")
    if a.depends_on:
        console.print(f"  built from {', '.join(a.depends_on)}")
    if found.vllm:
        table = make_table("vLLM hash", "rank", "prefix", make_column("files", justify="right"), make_column("size", justify="right"), "factors",
                      title="vLLM compile caches", title_justify="left")  # fmt: skip
        for d in found.vllm:
            table.add_row(d.hash, d.rank, d.prefix or "-", str(d.files), format_bytes(d.bytes),
                          "recorded" if d.factors is not None else "-")  # fmt: skip
        console.print(table)
    for d in found.aot:
        console.print(f"vLLM AOT compile {d.hash[:16]}…: {', '.join(d.ranks) or 'no rank'}, {d.files} file(s), {format_bytes(d.bytes)}")
    for d in found.inductor:
        console.print(f"Inductor cache {d.relpath}/: FX graphs {d.fxgraph}, AOTAutograd entries {d.aotautograd}, {format_bytes(d.bytes)}")
    if found.triton_kernels:
        console.print(f"Triton: {found.triton_kernels} kernel(s)")
    if found.factor_changes:
        console.print("[yellow]vLLM hashed this key more than one way[/] (it missed its own cache inside ours):")
        for c in found.factor_changes:
            console.print(f"  {c.rank}/{c.prefix or '-'} {c.old_hash} → {c.new_hash}: {c.factor}: {show(c.old)} → {show(c.new)}")


# --- stats ------------------------------------------------------------------------------------


@app.command("stats")
def stats_command(
    ctx: typer.Context,
    since: Annotated[Optional[str], typer.Option(help="Only this recent period: 24h, 7d, 4w.", show_default=False)] = None,
    target: TargetOption = None,
    as_json: JsonOption = False,
) -> None:
    """Hits, misses, builds and bytes per layer and model, and the boot time the cache saved."""
    from ..stats import stats

    roots, manifest = opened(ctx, target)
    now = time.time()
    report = stats(manifest, since=now - parse_duration(since) if since is not None else None, now=now)
    if as_json:
        print_json(
            {
                "since": report.since, "until": report.until, "saved_seconds": report.saved_seconds,
                "layers": [
                    {"layer": l.layer, "model": l.model, "hits": l.hits, "misses": l.misses, "builds": l.builds,
                     "hit_rate": l.hit_rate, "built_bytes": l.built_bytes, "pruned": l.pruned,
                     "pruned_bytes": l.pruned_bytes, "stored": l.stored, "stored_bytes": l.stored_bytes}
                    for l in report.layers
                ],
                "models": [
                    {"model": m.model, "boots": m.boots, "warm_boots": m.warm_boots, "cold_boots": m.cold_boots,
                     "mean_cold_seconds": m.mean_cold_seconds, "mean_warm_seconds": m.mean_warm_seconds,
                     "saved_seconds": m.saved_seconds}
                    for m in report.models
                ],
            }  # fmt: skip
        )
        return
    right = {"justify": "right"}
    table = make_table("layer", "model", *(make_column(n, **right) for n in ("hits", "misses", "builds", "hit rate", "built", "pruned", "stored")),
                  title=f"Since {format_age(now - report.since) if report.since else 'the beginning'}", title_justify="left")  # fmt: skip
    for l in report.layers:
        rate = f"{l.hit_rate:.0%}" if l.hit_rate is not None else "-"
        table.add_row(l.layer, l.model, str(l.hits), str(l.misses), str(l.builds), rate, format_bytes(l.built_bytes),
                      format_bytes(l.pruned_bytes), f"{format_bytes(l.stored_bytes)} ({l.stored})")  # fmt: skip
    console.print(table)
    for m in report.models:
        cold = f"{m.mean_cold_seconds:.1f} s" if m.mean_cold_seconds is not None else "never seen"
        warm = f"{m.mean_warm_seconds:.1f} s" if m.mean_warm_seconds is not None else "-"
        saved = _duration(m.saved_seconds) if m.saved_seconds is not None else "unknown (no cold boot recorded)"
        console.print(f"{m.model}: {m.boots} boot(s), {m.warm_boots} warm (mean {warm}), {m.cold_boots} cold (mean {cold}); saved {saved}")
    console.print(f"Boot time saved: {_duration(report.saved_seconds)}")


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


# --- weights ----------------------------------------------------------------------------------


@app.command("weights")
def weights_command(ctx: typer.Context, target: TargetOption = None, as_json: JsonOption = False) -> None:
    """Every model revision in the weights layer's Hugging Face cache, recorded or not, as
    huggingface_hub scans it. Remove them with `prune --layer weights` (or `--key`)."""
    from ..prune import hub_revisions

    roots, manifest = opened(ctx, target)
    recorded = {a.key for a in manifest.artifacts(layer="weights")}
    pinned, dependents = manifest.pinned(), manifest.dependents()
    revisions = sorted(hub_revisions(roots), key=lambda a: (a.model, -a.last_used_at))
    rows = [
        {
            "key": r.key, "model": r.model, "revision": r.relpath.rsplit("/", 1)[-1], "bytes": r.bytes,
            "files": r.files, "last_used_at": r.last_used_at, "recorded": r.key in recorded,
            "pinned": r.key in pinned, "snapshots": dependents.get(r.key, []),
        }  # fmt: skip
        for r in revisions
    ]
    if as_json:
        print_json({"revisions": rows})
        return
    now = time.time()
    if not rows:
        console.print(f"No model revisions in {roots.for_layer('weights').layer_dir('weights')}")
        return
    table = make_table(key_column(), "revision", make_column("size", justify="right"), "last used", "notes")
    for row, revision in zip(rows, revisions):
        notes = [n for n, on in (("pinned", row["pinned"]), ("not recorded", not row["recorded"])) if on]
        if row["snapshots"]:
            notes.append(f"{len(row['snapshots'])} snapshot(s) built from it")
        table.add_row(row["key"], row["revision"][:8], format_bytes(row["bytes"]),
                      format_age(now - revision.last_used_at), ", ".join(notes))  # fmt: skip
    console.print(table)
