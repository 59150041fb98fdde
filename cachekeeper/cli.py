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
from rich.console import Console
from rich.table import Column, Table

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

console = Console(highlight=False, soft_wrap=True)
stderr = Console(stderr=True, highlight=False, soft_wrap=True)

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
        Optional[Path],
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

    ctx.obj = Settings(root=root.expanduser() if root else default_root(), db=db or None)


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
    table = Table("fact", "value", "source", title="Facts", title_justify="left")
    for fact in facts:
        table.add_row(fact.name, _show(fact.value), str(fact.source))
    console.print(table)
    _print_keys(keys)
    for change in mismatches:
        stderr.print(f"[bold red]mismatch[/] with {found.source}: {change}")


def _print_keys(keys: dict[str, Any]) -> None:
    table = Table("layer", _key_column(), title="Keys", title_justify="left")
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
    table = Table("layer", "status", _key_column(), title=f"Check of {report.target.source}", title_justify="left")
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
    from .sync import sync

    settings = _settings(ctx)
    roots = settings.roots(_find_target(target, required=False))
    manifest = settings.manifest(roots)
    sync(manifest, roots)
    artifacts = manifest.artifacts(layer=layer, model=model, state=None)
    deleting = {key for _, key in manifest.keys_in_state("deleting")}
    if as_json:
        _print_json(
            {
                "artifacts": [
                    {
                        "key": a.key, "layer": a.layer, "model": a.model,
                        "status": "deleting" if a.key in deleting else "published",
                        "bytes": a.bytes, "files": a.files, "created_at": a.created_at,
                        "last_used_at": a.last_used_at,
                        "path": str(roots.for_layer(a.layer).path / a.relpath),
                    }  # fmt: skip
                    for a in artifacts
                ]
            }
        )
        return
    now = time.time()
    columns = [_key_column(), "model", Column("size", justify="right"), "last used"]
    table = Table(*columns, *(["status"] if deleting else []))
    for a in artifacts:
        row = [a.key, a.model if a.model != "none" else "-", format_bytes(a.bytes), format_age(now - a.last_used_at)]
        table.add_row(*row, *(["[red]deleting[/]" if a.key in deleting else "published"] if deleting else []))
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
    from .sync import sync

    roots = settings.roots(target)
    manifest = settings.manifest(roots)
    sync(manifest, roots)
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
        str, typer.Option(help="Remove artifacts not used for this long: 90m, 12h, 7d, 2w.", show_default=False)
    ],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would be removed; remove nothing.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    target: TargetOption = None,
    as_json: JsonOption = False,
) -> None:
    """Remove artifacts that have not been used for a while. Nothing outside the root is touched."""
    from .prune import execute_prune, plan_prune
    from .sync import sync

    seconds = parse_duration(older_than)
    settings = _settings(ctx)
    roots = settings.roots(_find_target(target, required=False))
    manifest = settings.manifest(roots)
    sync(manifest, roots)
    plan = plan_prune(manifest, older_than=seconds)
    if dry_run:
        _print_prune(plan.removals, (), dry_run=True, as_json=as_json)
        return
    if plan.removals and not yes and not as_json and sys.stdin.isatty():
        _print_prune(plan.removals, (), dry_run=True, as_json=False)
        if not typer.confirm(f"Remove {len(plan.removals)} artifact(s), {format_bytes(plan.bytes)}?"):
            raise typer.Exit(errors.NOT_READY)
    result = execute_prune(plan, manifest, roots)  # with nothing planned, it still clears leftovers
    _print_prune(result.removed, result.skipped, dry_run=False, as_json=as_json, leftovers=result.leftovers)


def _print_prune(removed: Any, skipped: Any, *, dry_run: bool, as_json: bool, leftovers: Any = None) -> None:
    if as_json:
        data = {
            "dry_run": dry_run,
            "removed": [{"key": a.key, "layer": a.layer, "model": a.model, "bytes": a.bytes} for a in removed],
            "skipped": [{"key": a.key, "reason": reason} for a, reason in skipped],
            "bytes": sum(a.bytes for a in removed),
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
        console.print(f"{verb} {artifact.key} ({format_bytes(artifact.bytes)})")
    for artifact, reason in skipped:
        console.print(f"[yellow]kept[/] {artifact.key}: {reason}")
    total = format_bytes(sum(a.bytes for a in removed))
    console.print(f"{'Would free' if dry_run else 'Freed'} {total} in {len(removed)} artifact(s).")
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


# --- helpers and entry point ------------------------------------------------------------------


def _key_column() -> Column:
    return Column("key", no_wrap=True, overflow="fold")  # a key is copied and pasted: never cut it


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
