"""Quarantined artifacts: moving one back under its key."""

from __future__ import annotations

from typing import Annotated

import typer

from . import render
from .app import JsonOption, TargetOption, app, resolve_target, settings_of
from .render import print_json


@app.command()
def unquarantine(
    ctx: typer.Context,
    key: Annotated[str, typer.Argument(help="The key whose quarantined artifact to restore.", show_default=False)],
    target: TargetOption = None,
    as_json: JsonOption = False,
) -> None:
    """Move the newest quarantined artifact of KEY back and publish it again, with its canary.

    Refused (exit 1) when a newer artifact took the key since, or a process holds its lease. Its
    strikes are gone: boots use it again, and strike it again if it still fails them.
    """
    from ..keys import parse_key
    from ..quarantine import path_of, unquarantine

    parse_key(key)
    cache = settings_of(ctx).open(resolve_target(target), writing=True)
    entry, artifact = unquarantine(cache.manifest, cache.roots, key)
    path = cache.roots.for_layer(entry.layer).artifact_dir(entry.layer, entry.key)
    if as_json:
        print_json({"key": key, "restored": entry.summary(), "path": str(path), "bytes": artifact.bytes})
    else:
        render.unquarantined(entry, path, path_of(cache.roots.for_layer(entry.layer), entry))
