"""The manifest database: its schema revision, and upgrades."""

from __future__ import annotations

import typer

from .app import JsonOption, TargetOption, app, resolve_target, settings_of
from .render import console, print_json

db_app = typer.Typer(help="The manifest database: schema revision and upgrades.", no_args_is_help=True)
app.add_typer(db_app, name="db")


@db_app.command("upgrade")
def db_upgrade(ctx: typer.Context, target: TargetOption = None, as_json: JsonOption = False) -> None:
    """Upgrade the manifest's schema to the one this cachekeeper needs."""
    from ..manifest import Manifest

    settings = settings_of(ctx)
    manifest = Manifest.connect(settings.url(settings.roots(resolve_target(target))))
    before, after = manifest.upgrade()
    if as_json:
        print_json({"from": before, "to": after})
    else:
        console.print(f"Manifest schema: {before or 'empty'} → {after}")


@db_app.command("current")
def db_current(ctx: typer.Context, target: TargetOption = None, as_json: JsonOption = False) -> None:
    """Show the manifest's schema revision and the one this cachekeeper needs."""
    from ..manifest import Manifest

    settings = settings_of(ctx)
    manifest = Manifest.connect(settings.url(settings.roots(resolve_target(target))))
    current, head = manifest.current(), manifest.head()
    if as_json:
        print_json({"current": current, "head": head, "up_to_date": current == head})
    else:
        console.print(f"Manifest schema: {current or 'empty'} (this cachekeeper needs {head})")
