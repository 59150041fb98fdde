"""Commands around a deploy: what this machine is, running under the cache, checking a target
before a deploy, its snapshot tag, and why two keys differ."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from typing import Annotated, Any, Literal

import typer

from .. import errors
from ..errors import UsageError
from . import render
from .app import JsonOption, TargetOption, app, resolve_target, settings_of
from .render import print_json, stderr


@app.command()
def fingerprint(ctx: typer.Context, target: TargetOption = None, as_json: JsonOption = False) -> None:
    """Show this machine's facts and the cache key of every layer.

    With a target, its model, revision and engine arguments join the facts, and any fact this
    machine contradicts is listed.
    """
    from ..deploy import fingerprint as fingerprint_of

    found = resolve_target(target)
    report = fingerprint_of(found, settings_of(ctx).roots(found).hf_cache())
    if as_json:
        print_json(report.to_json())
    else:
        render.fingerprint(report, found)


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

    For `vllm serve MODEL --flag ...` the caches are keyed by the model and engine arguments of
    the command line (what will run), read with vLLM's own parser when vLLM is importable; each
    place where they contradict the target is said on stderr.
    """
    from ..runtime import activate
    from ..serve_command import contradictions, read_serve_command

    if busy not in ("wait", "cold"):
        raise UsageError(f"--busy must be wait or cold, not {busy!r}")
    if not command:
        raise UsageError("run needs a command after --, such as: cachekeeper run -- python serve.py")
    if shutil.which(command[0]) is None:
        raise UsageError(f"cannot run {command[0]!r}: no such executable (check the name and PATH)")
    settings = settings_of(ctx)
    found = resolve_target(target)
    served = read_serve_command(command)
    if served is not None:
        if served.model is None:
            raise UsageError("cachekeeper run: name the model in the command (vllm serve MODEL ...)")
        if found is not None:
            for change in contradictions(found, served):
                stderr.print(f"cachekeeper: the command contradicts {found.source}: {change}; keyed by the command")
            found = found._replace(model=served.model, revision=served.revision, engine=served.engine)
    on_busy: Literal["wait", "cold"] = "wait" if busy == "wait" else "cold"
    with activate(
        settings.root,
        target=found,
        model=served.model if served else None,
        revision=served.revision if served else None,
        engine=served.engine if served else None,
        on_busy=on_busy,
        db=settings.db,
    ) as ck:
        for change in ck.mismatches:
            stderr.print(f"[bold red]cachekeeper: mismatch[/] with {found.source if found else 'the target'}: {change}")
        for use in ck.layers.values():
            stderr.print(f"cachekeeper: {use.layer} {use.status} {use.key}")
        code = _run_child(command)
        if code != 0:  # nothing is published, and what it hit gets a strike
            ck.discard(failure=f"the command exited with {code}")
    if as_json:
        print(json.dumps({"exit_code": code, "published": code == 0, **ck.to_json()}, sort_keys=True))
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


@app.command()
def check(
    ctx: typer.Context,
    target: TargetOption = None,
    rebuild: Annotated[
        bool,
        typer.Option(
            "--rebuild",
            help="When a layer is cold or stale, run the target's warmup command (once per cold GPU "
            "type when it holds {gpu}), then check again.",
        ),
    ] = False,
    any_landing: Annotated[
        bool,
        typer.Option(
            "--any",
            help="Ready when each layer is warm on at least one GPU type the deploy may land on "
            "(the others boot cold), not on every one.",
        ),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Say, per layer and per GPU type the deploy may land on, whether its caches are warm.

    gpu = "H100" may run on an H200, "B200+" on a B300, and a list falls back from one type to the
    next: each of these landings is checked. Exit 0 when every row is warm (with --any: when each
    layer is warm somewhere), 1 when not, 2 on bad input. With --rebuild the exit code is the
    second check's.
    """
    from ..check import check as check_target

    found = resolve_target(target, required=True)
    assert found is not None
    if rebuild and not found.warmup:
        raise UsageError(f"{found.source} names no warmup command: add warmup = [...] to its [target] table")
    cache = settings_of(ctx).open(found)
    report = check_target(found, cache, any_landing=any_landing)
    first = None
    if rebuild and report.needs_rebuild:
        first = report
        if not as_json:
            render.check(report, out=stderr)  # stdout holds only the final answer
        for landing, command in found.warmup_commands(report.cold_landings):
            where = "" if landing is None else f" for {landing}"
            stderr.print(f"cachekeeper: running the warmup{where}: {' '.join(command)}")
            code = _run_warmup(command)
            if code != 0:
                stderr.print(f"[bold red]cachekeeper: the warmup{where} exited with {code}[/]")
        cache.fold()
        report = check_target(found, cache, any_landing=any_landing)
    if as_json:
        data = report.to_json()
        if first is not None:
            data["before_rebuild"] = first.to_json()
        print_json(data)
    else:
        render.check(report)
    raise typer.Exit(errors.OK if report.ready else errors.NOT_READY)


def _run_warmup(command: tuple[str, ...]) -> int:
    if shutil.which(command[0]) is None:
        raise UsageError(f"cannot run the warmup {command[0]!r}: no such executable (check the name and PATH)")
    # Its output is the user's to read; stdout stays ours for --json.
    return _run_child(list(command), stdout=sys.stderr)


@app.command("snapshot-tag")
def snapshot_tag(ctx: typer.Context, target: TargetOption = None, as_json: JsonOption = False) -> None:
    """Print the key a deploy's memory snapshot is made under, computed from the target (no GPU).

    Put it in the image's environment: a new key is a new config, so Modal takes a new snapshot.
    A deploy that may land on several GPU types has a tag per type, one line each; the image's
    environment holds the first. With --json: {"tags": {gpu: key}, "key", "env"}, where "key" and
    "env" (the variables cachekeeper.modal.snapshot_env() would set) are the first landing's.
    """
    from ..modal import SNAPSHOT_KEY_ENV, snapshot_env, snapshot_tags

    found = resolve_target(target, required=True)
    assert found is not None
    hf_cache = settings_of(ctx).roots(found).hf_cache()
    env = snapshot_env(found, hf_cache=hf_cache)
    tags = snapshot_tags(found, hf_cache=hf_cache)
    if as_json:
        print_json({"key": env[SNAPSHOT_KEY_ENV], "env": env, "tags": tags})
    else:
        render.snapshot_tags(tags)


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
    from ..keys import parse_key

    parse_key(key_a)
    parse_key(key_b)
    found = resolve_target(target)
    changes = explain_keys(key_a, key_b, found, settings_of(ctx).open(found))
    if as_json:
        print_json({"old": key_a, "new": key_b, "changes": [change.to_json() for change in changes]})
    else:
        render.changes(changes)
