"""Load: 32 processes boot, check, list and prune one root at once for a bounded time. No error,
no artifact lost, and none deleted while in use: every boot that hits checks every file of what
it uses while prunes with --older-than 0s remove whatever is not in use, as often as they can.

``make soak`` (CACHEKEEPER_SOAK=1) runs the same for ten times longer.
"""

from __future__ import annotations

import time

import pytest

from cachekeeper.manifest import Manifest, default_url
from cachekeeper.store import Root, Roots, iter_sidecars
from cachekeeper.sync import sync
from cachekeeper.verify import verify

from .adversary import SOAK
from .workers import LOAD_PARTS, Workers, load_content

# Runs for SECONDS (16 s, 120 s under make soak) by design.
pytestmark = pytest.mark.slow

SECONDS = 120.0 if SOAK else 16.0
BOOTERS, CHECKERS, LISTERS, PRUNERS = 16, 6, 4, 6
VARIANTS = 6


def test_32_processes_booting_checking_listing_and_pruning_lose_nothing_and_delete_nothing_in_use(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    targets = []
    for variant in range(VARIANTS):
        target = tmp_path / f"variant-{variant}.toml"
        target.write_text(
            f'[target]\ngpu = "cpu"\nlayers = ["compile", "snapshot"]\n[target.engine]\nvariant = {variant}\n'
        )
        targets.append(str(target))
    url = default_url(Roots.at(root))
    Manifest.open(url)  # the schema, once, before the crowd arrives
    started = time.monotonic()
    booters = Workers(
        "boot_loop",
        url,
        [{"root": str(root), "seconds": SECONDS, "variants": VARIANTS, "seed": n} for n in range(BOOTERS)],
    )
    commands = (
        [["check", "--target", targets[n % VARIANTS], "--json"] for n in range(CHECKERS)]
        + [["ls", "--json"]] * LISTERS
        + [["prune", "--older-than", "0s", "--yes", "--json"]] * PRUNERS
    )
    others = Workers("command_loop", url, [{"root": str(root), "seconds": SECONDS, "command": c} for c in commands])
    try:
        booted = booters.results(timeout=SECONDS + 240)
        ran = others.results(timeout=SECONDS + 240)
    finally:
        booters.kill()
        others.kill()

    damaged = [problem for result in booted for problem in result["damaged"]]
    complaints = [problem for result in ran for problem in result["complaints"]]
    assert damaged == [] and complaints == [], (damaged[:5], complaints[:5])
    counts = {kind: sum(result["counts"][kind] for result in booted) for kind in ("hit", "build", "private")}
    prunes = sum(sum(result["codes"].values()) for result in ran[-PRUNERS:])
    removed = sum(result["removed"] for result in ran[-PRUNERS:])
    commands = sum(sum(r["codes"].values()) for r in ran)
    elapsed = time.monotonic() - started
    print(f"{elapsed:.1f} s: {counts} boots' layers, {prunes} prunes removing {removed}, {commands} commands")
    assert counts["hit"] > 0 and removed > 0 and counts["build"] > VARIANTS * 2  # prunes removed, boots rebuilt

    # Nothing lost: what is published is whole, and the manifest says exactly that.
    manifest = Manifest.open(url)
    sync(manifest, Roots.at(root))
    published = {a.key: a for _, a in iter_sidecars(Root(root)) if not isinstance(a, ValueError)}
    for key, artifact in published.items():
        for part in range(LOAD_PARTS):
            assert (root / artifact.relpath / f"part-{part}").read_bytes() == load_content(key, part), key
    rows = {a.key for a in manifest.artifacts()}
    assert rows == set(published), (rows - set(published), set(published) - rows, manifest.keys_in_state("deleting"))
    report = verify(manifest, Roots.at(root))
    assert report.ok, report.findings
