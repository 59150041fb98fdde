"""The ``cachekeeper`` command: parse, call the library, print. Nothing else happens here."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from . import errors
from .errors import CachekeeperError, UnknownKeyError, UsageError
from .units import format_age, format_bytes, parse_duration

try:  # typer 0.20 and later carry their own copy of click
    from typer._click.exceptions import ClickException
except ImportError:  # pragma: no cover - older typer on top of click
    from click import ClickException

app = typer.Typer(
    name="cachekeeper",
    help="Cache keys, a manifest and housekeeping for LLM-server caches on serverless GPUs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
db_app = typer.Typer(help="The manifest database: schema revision and upgrades.", no_args_is_help=True)
app.add_typer(db_app, name="db")



class _LazyConsole:
    """rich's Console, made on first use: ``--json`` output never loads rich, and starts faster."""

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

TargetOption = Annotated[
    Optional[Path],
    typer.Option("--target", "-t", help="Target file. Default: ./cachekeeper.toml, else ./pyproject.toml."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON on stdout instead of tables.")]


@dataclass
class Settings:
    root: Path
    db: str | None

    def roots(self, target: Any) -> Any:
        from .store import Roots

        return Roots.at(self.root, target.roots if target is not None else None)

    def manifest(self, roots: Any) -> Any:
        from .manifest import Manifest, default_url

        return Manifest.open(self.db or default_url(roots))


@app.callback()
def _global(
    ctx: typer.Context,
    root: Annotated[
        Optional[str],
        typer.Option(help="Cache root. Default: $CACHEKEEPER_ROOT, else the user cache directory.", show_default=False),
    ] = None,
    db: Annotated[
        Optional[str],
        typer.Option(
            envvar="CACHEKEEPER_DB",
            help="Manifest database URL. Default: sqlite:///ROOT/.cachekeeper/manifest.db.",
            show_default=False,
        ),
    ] = None,
) -> None:
    from .store import default_root

    if root is not None and (not root.strip() or "\0" in root):
        raise UsageError(f"--root {root!r} names no directory: pass one, or leave it out for $CACHEKEEPER_ROOT")
    path = Path(root).expanduser() if root is not None else default_root()
    if path.exists() and not path.is_dir():
        raise UsageError(f"the cache root {path} is not a directory")
    ctx.obj = Settings(root=path, db=db or None)


def _settings(ctx: typer.Context) -> Settings:
    return ctx.find_root().obj


def _find_target(path: Path | None, required: bool) -> Any:
    from .target import find_target

    target = find_target(path)
    if target is None and required:
        raise UsageError("no target: pass --target FILE, or create cachekeeper.toml here (see README)")
    return target


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True, default=str))


# --- fingerprint ------------------------------------------------------------------------------


@app.command()
def fingerprint(ctx: typer.Context, target: TargetOption = None, as_json: JsonOption = False) -> None:
    """Show this machine's facts and the cache key of every layer.

    With a target, its model, revision and engine arguments join the facts, and any fact this
    machine contradicts is listed.
    """
    from .facts import observe
    from .keys import derive_keys
    from .layers import DEFAULT_LAYERS, WEIGHTS
    from .runtime import contradictions

    settings = _settings(ctx)
    found = _find_target(target, required=False)
    roots = settings.roots(found)
    facts = observe(
        model=found.model if found else None,
        revision=found.revision if found else None,
        engine=found.engine if found else None,
        image=found.image if found else None,
        hf_cache=roots.for_layer(WEIGHTS).layer_dir(WEIGHTS),
    )
    keys = derive_keys(facts, found.layers if found else DEFAULT_LAYERS)
    mismatches = contradictions(found.declared_facts(), facts) if found else ()
    if as_json:
        _print_json(
            {
                "facts": {fact.name: _plain(fact.value) for fact in facts},
                "sources": {fact.name: str(fact.source) for fact in facts},
                "keys": {layer: str(key) for layer, key in keys.items()},
                "mismatches": [change.to_json() for change in mismatches],
            }
        )
        return
    table = _table("fact", "value", "source", title="Facts", title_justify="left")
    for fact in facts:
        table.add_row(fact.name, _show(fact.value), str(fact.source))
    console.print(table)
    _print_keys(keys)
    for change in mismatches:
        stderr.print(f"[bold red]mismatch[/] with {found.source}: {change}")


def _print_keys(keys: dict[str, Any]) -> None:
    table = _table("layer", _key_column(), title="Keys", title_justify="left")
    for layer, key in keys.items():
        table.add_row(layer, str(key))
    console.print(table)


# --- run --------------------------------------------------------------------------------------


@app.command(context_settings={"ignore_unknown_options": True})
def run(
    ctx: typer.Context,
    command: Annotated[list[str], typer.Argument(help="The command to run, after --.", show_default=False)],
    target: TargetOption = None,
    busy: Annotated[
        str, typer.Option(help="When another process builds a key: wait for it, or boot cold at once.")
    ] = "wait",
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary as stdout's last line.")] = False,
) -> None:
    """Run COMMAND with its caches pointed at the right keys; publish only if it exits 0.

    Example: cachekeeper run --target cachekeeper.toml -- python warmup.py
    """
    from .runtime import activate

    if busy not in ("wait", "cold"):
        raise UsageError(f"--busy must be wait or cold, not {busy!r}")
    if not command:
        raise UsageError("run needs a command after --, such as: cachekeeper run -- python serve.py")
    if shutil.which(command[0]) is None:
        raise UsageError(f"cannot run {command[0]!r}: no such executable (check the name and PATH)")
    settings = _settings(ctx)
    found = _find_target(target, required=False)
    with activate(settings.root, target=found, on_busy=busy, db=settings.db) as ck:  # type: ignore[arg-type]
        for change in ck.mismatches:
            stderr.print(f"[bold red]cachekeeper: mismatch[/] with {found.source}: {change}")
        for use in ck.layers.values():
            stderr.print(f"cachekeeper: {use.layer} {use.status} {use.key}")
        code = _run_child(command)
        if code != 0:
            ck.discard()
    if as_json:
        print(
            json.dumps(
                {
                    "exit_code": code,
                    "published": code == 0,
                    "layers": [
                        {"layer": u.layer, "key": str(u.key), "status": u.status, "path": str(u.path)}
                        for u in ck.layers.values()
                    ],
                    "mismatches": [change.to_json() for change in ck.mismatches],
                },
                sort_keys=True,
            )
        )
    raise typer.Exit(code)


def _run_child(command: list[str], stdout: Any = None) -> int:
    """Run the command, passing on SIGINT and SIGTERM; its exit code (128+N when killed by N)."""
    try:
        child = subprocess.Popen(command, stdout=stdout)
    except (FileNotFoundError, PermissionError) as error:
        raise UsageError(f"cannot run {command[0]!r}: {error.strerror}") from None

    def forward(signum: int, _frame: Any) -> None:
        child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 128 - code if code < 0 else code


# --- check ------------------------------------------------------------------------------------


@app.command()
def check(
    ctx: typer.Context,
    target: TargetOption = None,
    rebuild: Annotated[
        bool,
        typer.Option(
            "--rebuild",
            help="When a layer is cold or stale, run the target's warmup command, then check again.",
        ),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Say, per layer, whether the deploy a target describes will find its caches warm.

    Exit 0 when every layer is warm, 1 when not, 2 on bad input. With --rebuild the exit code is
    the second check's.
    """
    from .check import check as check_target
    from .check import needs_rebuild

    settings = _settings(ctx)
    found = _find_target(target, required=True)
    if rebuild and not found.warmup:
        raise UsageError(f"{found.source} names no warmup command: add warmup = [...] to its [target] table")
    roots = settings.roots(found)
    manifest = settings.manifest(roots)
    report = check_target(found, roots, manifest)
    first = None
    if rebuild and needs_rebuild(report):
        first = report
        if not as_json:
            _print_check(report, out=stderr)  # stdout holds only the final answer
        stderr.print(f"cachekeeper: running the warmup: {' '.join(found.warmup)}")
        code = _run_warmup(found.warmup)
        if code != 0:
            stderr.print(f"[bold red]cachekeeper: the warmup exited with {code}[/]")
        report = check_target(found, roots, manifest)
    if as_json:
        data = _check_json(report)
        if first is not None:
            data["before_rebuild"] = _check_json(first)
        _print_json(data)
    else:
        _print_check(report)
    raise typer.Exit(errors.OK if report.ready else errors.NOT_READY)


def _run_warmup(command: tuple[str, ...]) -> int:
    if shutil.which(command[0]) is None:
        raise UsageError(f"cannot run the warmup {command[0]!r}: no such executable (check the name and PATH)")
    # Its output is the user's to read; stdout stays ours for --json.
    return _run_child(list(command), stdout=sys.stderr)


def _check_json(report: Any) -> dict[str, Any]:
    observation = report.observation
    return {
        "ready": report.ready,
        "target": report.target.source,
        "layers": [
            {
                "layer": layer.layer,
                "key": str(layer.key),
                "status": str(layer.status),
                "nearest": layer.nearest,
                "changes": [change.to_json() for change in layer.changes],
                "unverified": list(layer.key.unverified),
            }
            for layer in report.layers
        ],
        "facts": {fact.name: {"value": _plain(fact.value), "source": str(fact.source)} for fact in report.facts},
        "unverified": list(report.unverified),
        "observation": None
        if observation is None
        else {"gpu_type": observation.gpu_type, "host": observation.host, "last_seen_at": observation.last_seen_at},
    }


_STATUS_STYLE = {"warm": "green", "cold": "yellow", "stale": "red", "building": "cyan"}


def _print_check(report: Any, out: Console = console) -> None:
    table = _table("layer", "status", _key_column(), title=f"Check of {report.target.source}", title_justify="left")
    for layer in report.layers:
        style = _STATUS_STYLE[str(layer.status)]
        table.add_row(layer.layer, f"[{style}]{layer.status}[/]", str(layer.key))
    out.print(table)
    for layer in report.layers:
        if layer.changes:
            out.print(f"[red]{layer.layer}[/] is stale against {layer.nearest}:")
            for change in layer.changes:
                out.print(f"  {change}")
    inherited = sorted(fact.name for fact in report.facts if str(fact.source) == "inherited")
    if report.observation is not None and inherited:
        seen = format_age(time.time() - report.observation.last_seen_at)
        out.print(
            f"Inherited from the fingerprint seen on {report.observation.gpu_type} "
            f"({report.observation.host}, {seen}): {', '.join(inherited)}"
        )
    if report.unverified:
        out.print(
            f"[yellow]Unverified:[/] nothing observed or declared {', '.join(report.unverified)}; "
            "boot once on this GPU type (or declare them) to verify these keys."
        )
    out.print("[green]ready[/]" if report.ready else "[red]not ready[/]")


# --- snapshot-tag -----------------------------------------------------------------------------


@app.command("snapshot-tag")
def snapshot_tag(ctx: typer.Context, target: TargetOption = None, as_json: JsonOption = False) -> None:
    """Print the key a deploy's memory snapshot is made under, computed from the target (no GPU).

    Put it in the image's environment: a new key is a new config, so Modal takes a new snapshot.
    With --json, also the variables that cachekeeper.modal.snapshot_env() would set.
    """
    from .layers import WEIGHTS
    from .modal import SNAPSHOT_KEY_ENV, snapshot_env

    settings = _settings(ctx)
    found = _find_target(target, required=True)
    env = snapshot_env(found, hf_cache=settings.roots(found).for_layer(WEIGHTS).layer_dir(WEIGHTS))
    if as_json:
        _print_json({"key": env[SNAPSHOT_KEY_ENV], "env": env})
    else:
        print(env[SNAPSHOT_KEY_ENV])


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
    from .layers import check_scope
    from .sync import refresh

    check_scope(layer, model)
    settings = _settings(ctx)
    roots = settings.roots(_find_target(target, required=False))
    manifest = settings.manifest(roots)
    refresh(manifest, roots)
    artifacts = manifest.summaries(layer=layer, model=model)
    if as_json:
        _print_json(
            {
                "artifacts": [
                    {
                        "key": a.key, "layer": a.layer, "model": a.model, "status": a.state, "bytes": a.bytes,
                        "files": a.files, "created_at": a.created_at, "last_used_at": a.last_used_at,
                        "path": str(roots.for_layer(a.layer).path / a.relpath),
                    }  # fmt: skip
                    for a in artifacts
                ]
            }
        )
        return
    now = time.time()
    deleting = any(a.state == "deleting" for a in artifacts)
    columns = [_key_column(), "model", _column("size", justify="right"), "last used"]
    table = _table(*columns, *(["status"] if deleting else []))
    for a in artifacts:
        row = [a.key, a.model if a.model != "none" else "-", format_bytes(a.bytes), format_age(now - a.last_used_at)]
        table.add_row(*row, *(["[red]deleting[/]" if a.state == "deleting" else "published"] if deleting else []))
    console.print(table)
    total = sum(a.bytes for a in artifacts)
    console.print(f"{len(artifacts)} artifact(s), {format_bytes(total)}")


# --- explain ----------------------------------------------------------------------------------


@app.command()
def explain(
    ctx: typer.Context,
    key_a: Annotated[str, typer.Argument(help="The older key.", show_default=False)],
    key_b: Annotated[str, typer.Argument(help="The newer key.", show_default=False)],
    target: TargetOption = None,
    as_json: JsonOption = False,
) -> None:
    """Say which facts differ between two keys, old value → new value.

    Keys are looked up among recorded artifacts and the keys the target and this machine derive.
    """
    from .keys import explain as explain_keys
    from .keys import parse_key

    parse_key(key_a)
    parse_key(key_b)
    settings = _settings(ctx)
    found = _find_target(target, required=False)
    known = dict(_known_keys(settings, found, {key_a, key_b}))
    for key in (key_a, key_b):
        if key not in known:
            raise UnknownKeyError(
                f"key {key} is unknown: it is not in the manifest, and neither the target nor this machine derives it"
            )
    changes = explain_keys(known[key_a], known[key_b])
    if as_json:
        _print_json({"old": key_a, "new": key_b, "changes": [change.to_json() for change in changes]})
        return
    if not changes:
        console.print("The two keys are made of the same facts.")
    for change in changes:
        console.print(str(change))


def _known_keys(settings: Settings, target: Any, wanted: set[str]) -> Iterator[tuple[str, Any]]:
    from .check import target_facts
    from .facts import observe
    from .keys import derive_keys
    from .layers import DEFAULT_LAYERS, WEIGHTS
    from .store import read_sidecar
    from .sync import refresh

    roots = settings.roots(target)
    manifest = settings.manifest(roots)
    refresh(manifest, roots)
    for key in wanted:
        artifact = manifest.artifact(key)
        if artifact is None:
            layer = key.split("-", 1)[0]
            artifact = read_sidecar(roots.for_layer(layer), layer, key)
        if artifact is not None:
            yield key, artifact.cache_key()
    layers = target.layers if target else DEFAULT_LAYERS
    if target is not None:
        observation = manifest.latest_observation(target.gpu.name)
        yield from ((str(k), k) for k in derive_keys(target_facts(target, observation, roots), layers).values())
    here = observe(
        model=target.model if target else None,
        revision=target.revision if target else None,
        engine=target.engine if target else None,
        image=target.image if target else None,
        hf_cache=roots.for_layer(WEIGHTS).layer_dir(WEIGHTS),
    )
    yield from ((str(k), k) for k in derive_keys(here, layers).values())


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
    from .prune import execute_prune, plan_prune
    from .sync import sync
    from .units import parse_size

    seconds = parse_duration(older_than) if older_than is not None else None
    budget = parse_size(max_size) if max_size is not None else None
    settings = _settings(ctx)
    targets = _find_targets(target)
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
    with _progress("Removing", len(plan.removals), quiet=as_json) as advance:
        # With nothing planned it still runs: every prune clears what killed processes left.
        result = execute_prune(plan, manifest, roots, progress=lambda _: advance(1))
    _print_prune(plan, result.removed, result.skipped, dry_run=False, as_json=as_json, leftovers=result.leftovers)


def _find_targets(paths: list[Path] | None) -> list[Any]:
    if paths:
        return [_find_target(path, required=True) for path in paths]
    found = _find_target(None, required=False)
    return [found] if found is not None else []


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
        _print_json(data)
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
    from .sync import sync

    settings = _settings(ctx)
    roots = settings.roots(_find_target(target, required=False))
    report = sync(settings.manifest(roots), roots)
    if as_json:
        _print_json(
            {"journals": report.journals, "records": report.records, "artifacts": report.artifacts,
             "unreadable_lines": report.unreadable_lines}  # fmt: skip
        )
        return
    console.print(
        f"Folded {report.records} record(s) from {report.journals} journal(s); "
        f"{report.artifacts} new artifact(s)."
        + (f" Skipped {report.unreadable_lines} unreadable line(s)." if report.unreadable_lines else "")
    )


# --- db ---------------------------------------------------------------------------------------


@db_app.command("upgrade")
def db_upgrade(ctx: typer.Context, target: TargetOption = None, as_json: JsonOption = False) -> None:
    """Upgrade the manifest's schema to the one this cachekeeper needs."""
    from .manifest import Manifest, default_url

    settings = _settings(ctx)
    roots = settings.roots(_find_target(target, required=False))
    manifest = Manifest.connect(settings.db or default_url(roots))
    before, after = manifest.upgrade()
    if as_json:
        _print_json({"from": before, "to": after})
    else:
        console.print(f"Manifest schema: {before or 'empty'} → {after}")


@db_app.command("current")
def db_current(ctx: typer.Context, target: TargetOption = None, as_json: JsonOption = False) -> None:
    """Show the manifest's schema revision and the one this cachekeeper needs."""
    from .manifest import Manifest, default_url

    settings = _settings(ctx)
    roots = settings.roots(_find_target(target, required=False))
    manifest = Manifest.connect(settings.db or default_url(roots))
    current, head = manifest.current(), manifest.head()
    if as_json:
        _print_json({"current": current, "head": head, "up_to_date": current == head})
    else:
        console.print(f"Manifest schema: {current or 'empty'} (this cachekeeper needs {head})")


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
    from .prune import set_pinned

    settings = _settings(ctx)
    roots = settings.roots(_find_target(target, required=False))
    artifact = set_pinned(settings.manifest(roots), roots, key, pinned=pinned)
    if as_json:
        _print_json({"key": key, "pinned": pinned, "layer": artifact.layer, "model": artifact.model})
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
    from .sync import refresh
    from .verify import verify

    settings = _settings(ctx)
    found = _find_target(target, required=False)
    roots = settings.roots(found)
    manifest = settings.manifest(roots)
    refresh(manifest, roots)
    custom = [layer.name for layer in found.layers] if found is not None else []
    with _progress("Verifying", None, quiet=as_json, in_bytes=True) as advance:
        report = verify(
            manifest, roots, layer=layer, model=model, keys=tuple(keys or ()), layers=custom,
            progress=advance, total=advance.total,
        )  # fmt: skip
    if as_json:
        _print_json(
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
        table = _table("finding", "layer", _column("artifact", overflow="fold"), "detail")
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
    from .doctor import doctor
    from .manifest import default_url

    settings = _settings(ctx)
    roots = settings.roots(_find_target(target, required=False))
    with _progress("Reading", None, quiet=as_json) as advance:
        _, report = doctor(settings.db or default_url(roots), roots, progress=advance, total=advance.total)
    if as_json:
        _print_json(
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
    from .inspection import inspect_artifact
    from .sync import refresh

    settings = _settings(ctx)
    roots = settings.roots(_find_target(target, required=False))
    manifest = settings.manifest(roots)
    refresh(manifest, roots)
    found = inspect_artifact(manifest, roots, key)
    a = found.artifact
    if as_json:
        _print_json(
            {
                "key": a.key, "layer": a.layer, "model": a.model, "path": str(found.path), "bytes": a.bytes,
                "files": a.files, "created_at": a.created_at, "last_used_at": a.last_used_at, "builder": a.builder,
                "depends_on": list(a.depends_on), "checksum": a.checksum, "pinned": found.pinned,
                "users": [u.owner for u in found.users], "dependents": list(found.dependents),
                "facts": {name: _plain(value) for name, value in a.facts.items()},
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
        table = _table("vLLM hash", "rank", "prefix", _column("files", justify="right"), _column("size", justify="right"), "factors",
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
            console.print(f"  {c.rank}/{c.prefix or '-'} {c.old_hash} → {c.new_hash}: {c.factor}: {_show(c.old)} → {_show(c.new)}")


# --- stats ------------------------------------------------------------------------------------


@app.command("stats")
def stats_command(
    ctx: typer.Context,
    since: Annotated[Optional[str], typer.Option(help="Only this recent period: 24h, 7d, 4w.", show_default=False)] = None,
    target: TargetOption = None,
    as_json: JsonOption = False,
) -> None:
    """Hits, misses, builds and bytes per layer and model, and the boot time the cache saved."""
    from .stats import stats
    from .sync import refresh

    settings = _settings(ctx)
    roots = settings.roots(_find_target(target, required=False))
    manifest = settings.manifest(roots)
    refresh(manifest, roots)
    now = time.time()
    report = stats(manifest, since=now - parse_duration(since) if since is not None else None, now=now)
    if as_json:
        _print_json(
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
    table = _table("layer", "model", *(_column(n, **right) for n in ("hits", "misses", "builds", "hit rate", "built", "pruned", "stored")),
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
    from .prune import hub_revisions
    from .sync import refresh

    settings = _settings(ctx)
    roots = settings.roots(_find_target(target, required=False))
    manifest = settings.manifest(roots)
    refresh(manifest, roots)
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
        _print_json({"revisions": rows})
        return
    now = time.time()
    if not rows:
        console.print(f"No model revisions in {roots.for_layer('weights').layer_dir('weights')}")
        return
    table = _table(_key_column(), "revision", _column("size", justify="right"), "last used", "notes")
    for row, revision in zip(rows, revisions):
        notes = [n for n, on in (("pinned", row["pinned"]), ("not recorded", not row["recorded"])) if on]
        if row["snapshots"]:
            notes.append(f"{len(row['snapshots'])} snapshot(s) built from it")
        table.add_row(row["key"], row["revision"][:8], format_bytes(row["bytes"]),
                      format_age(now - revision.last_used_at), ", ".join(notes))  # fmt: skip
    console.print(table)


# --- helpers and entry point ------------------------------------------------------------------


def _progress(description: str, total: int | None, *, quiet: bool, in_bytes: bool = False) -> Any:
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


def _table(*columns: Any, **options: Any) -> Any:
    from rich.table import Table

    return Table(*columns, **options)


def _column(header: str, **options: Any) -> Any:
    from rich.table import Column

    return Column(header, **options)


def _key_column() -> Any:
    return _column("key", no_wrap=True, overflow="fold")  # a key is copied and pasted: never cut it


def _plain(value: Any) -> Any:
    return [_plain(item) for item in value] if isinstance(value, tuple) else value


def _show(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(_plain(value))


def _one_line(message: str) -> str:
    return " ".join(message.split())


def main(argv: list[str] | None = None) -> None:
    """Entry point: one line on stderr and a meaningful exit code for every failure."""
    command = typer.main.get_command(app)
    try:
        code = command.main(args=argv, prog_name="cachekeeper", standalone_mode=False)
    except ClickException as error:  # a bad option or argument
        context = getattr(error, "ctx", None)
        where = context.command_path if context is not None else "cachekeeper"
        print(f"error: {_one_line(error.format_message())} (see `{where} --help`)", file=sys.stderr)
        code = errors.USAGE
    except typer.Abort:
        print("aborted", file=sys.stderr)
        code = errors.INTERRUPTED
    except CachekeeperError as error:
        print(f"error: {_one_line(str(error))}", file=sys.stderr)
        code = error.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = errors.INTERRUPTED
    except OSError as error:  # the file system said no: full, read-only, not a directory
        where = f"{error.filename}: " if error.filename else ""
        print(f"error: {_one_line(f'{where}{error.strerror or error}')}", file=sys.stderr)
        code = errors.NOT_READY
    except Exception as error:  # a bug: say so in one line; the traceback is one variable away
        if os.environ.get("CACHEKEEPER_DEBUG"):
            raise
        print(
            f"unexpected error: {type(error).__name__}: {_one_line(str(error))} "
            "(set CACHEKEEPER_DEBUG=1 to see the traceback)",
            file=sys.stderr,
        )
        code = errors.UNEXPECTED
    sys.exit(code if isinstance(code, int) else 0)
