"""Commands around a deploy: what this machine is, running under the cache, checking a target
before a deploy, and why two keys differ."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from typing import Annotated, Any

import typer

from .. import errors
from ..errors import UsageError
from ..units import format_age
from .app import JsonOption, TargetOption, app, resolve_target, settings_of
from .output import console, key_column, make_table, plain, print_json, show, stderr


# --- fingerprint ------------------------------------------------------------------------------


@app.command()
def fingerprint(ctx: typer.Context, target: TargetOption = None, as_json: JsonOption = False) -> None:
    """Show this machine's facts and the cache key of every layer.

    With a target, its model, revision and engine arguments join the facts, and any fact this
    machine contradicts is listed.
    """
    from ..check import local_facts
    from ..keys import derive_keys
    from ..layers import DEFAULT_LAYERS
    from ..runtime import contradictions

    settings = settings_of(ctx)
    found = resolve_target(target)
    facts = local_facts(found, settings.roots(found))
    keys = derive_keys(facts, found.layers if found else DEFAULT_LAYERS)
    mismatches = contradictions(found.declared_facts(), facts) if found else ()
    if as_json:
        print_json(
            {
                "facts": {fact.name: plain(fact.value) for fact in facts},
                "sources": {fact.name: str(fact.source) for fact in facts},
                "keys": {layer: str(key) for layer, key in keys.items()},
                "mismatches": [change.to_json() for change in mismatches],
            }
        )
        return
    table = make_table("fact", "value", "source", title="Facts", title_justify="left")
    for fact in facts:
        table.add_row(fact.name, show(fact.value), str(fact.source))
    console.print(table)
    _print_keys(keys)
    for change in mismatches:
        stderr.print(f"[bold red]mismatch[/] with {found.source}: {change}")


def _print_keys(keys: dict[str, Any]) -> None:
    table = make_table("layer", key_column(), title="Keys", title_justify="left")
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
    from ..runtime import activate

    if busy not in ("wait", "cold"):
        raise UsageError(f"--busy must be wait or cold, not {busy!r}")
    if not command:
        raise UsageError("run needs a command after --, such as: cachekeeper run -- python serve.py")
    if shutil.which(command[0]) is None:
        raise UsageError(f"cannot run {command[0]!r}: no such executable (check the name and PATH)")
    settings = settings_of(ctx)
    found = resolve_target(target)
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
    from ..check import check as check_target
    from ..check import needs_rebuild

    settings = settings_of(ctx)
    found = resolve_target(target, required=True)
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
        print_json(data)
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
        "facts": {fact.name: {"value": plain(fact.value), "source": str(fact.source)} for fact in report.facts},
        "unverified": list(report.unverified),
        "observation": None
        if observation is None
        else {"gpu_type": observation.gpu_type, "host": observation.host, "last_seen_at": observation.last_seen_at},
    }


_STATUS_STYLE = {"warm": "green", "cold": "yellow", "stale": "red", "building": "cyan"}


def _print_check(report: Any, out: Any = console) -> None:
    table = make_table("layer", "status", key_column(), title=f"Check of {report.target.source}", title_justify="left")
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
    from ..layers import WEIGHTS
    from ..modal import SNAPSHOT_KEY_ENV, snapshot_env

    settings = settings_of(ctx)
    found = resolve_target(target, required=True)
    env = snapshot_env(found, hf_cache=settings.roots(found).for_layer(WEIGHTS).layer_dir(WEIGHTS))
    if as_json:
        print_json({"key": env[SNAPSHOT_KEY_ENV], "env": env})
    else:
        print(env[SNAPSHOT_KEY_ENV])


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
    from ..check import explain_keys

    settings = settings_of(ctx)
    found = resolve_target(target)
    roots = settings.roots(found)
    changes = explain_keys(key_a, key_b, found, roots, settings.manifest(roots))
    if as_json:
        print_json({"old": key_a, "new": key_b, "changes": [change.to_json() for change in changes]})
        return
    if not changes:
        console.print("The two keys are made of the same facts.")
    for change in changes:
        console.print(str(change))
