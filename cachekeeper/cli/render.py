"""Everything the commands print: rich tables and progress bars on a terminal, JSON with ``--json``.

rich loads on first use, so that ``--json`` output never pays for it. The JSON of each report is
its own ``to_json()``; what people read is drawn here.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..check import Status
from ..doctor import CREATED, REPLACED
from ..facts import Source
from ..hub import revision_sha
from ..store import DELETING
from ..units import format_age, format_bytes, format_duration

if TYPE_CHECKING:
    from rich.console import Console

    from ..budget import RootFiles
    from ..check import CheckReport, LayerReport
    from ..deploy import Fingerprint
    from ..doctor import DoctorReport
    from ..hub import WeightsRevision
    from ..inspection import Inspection
    from ..keys import FactChange
    from ..manifest import ArtifactSummary, Stored
    from ..prune import PrunePlan, PruneResult
    from ..quarantine import Quarantined, QuarantineRemoval
    from ..stats import Stats
    from ..sync import SyncReport, Tidied
    from ..target import Target
    from ..verify import VerifyReport


class _LazyConsole:
    """rich's Console, made on first use."""

    def __init__(self, **options: Any) -> None:
        self._options = options
        self._console: Console | None = None

    @property
    def real(self) -> Console:
        if self._console is None:
            from rich.console import Console

            self._console = Console(**self._options)
        return self._console

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


console = _LazyConsole(highlight=False, soft_wrap=True)
stderr = _LazyConsole(stderr=True, highlight=False, soft_wrap=True)


def print_json(data: Any) -> None:
    """Keys sorted; indented for a person at a terminal, one line when piped."""
    import orjson

    indent = sys.stdout.isatty()
    try:
        options = orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS | (orjson.OPT_INDENT_2 if indent else 0)
        text = orjson.dumps(data, default=str, option=options).decode()
    except TypeError:  # orjson refuses integers beyond 64 bits, which an engine argument may be
        text = json.dumps(data, indent=2 if indent else None, sort_keys=True, default=str)
    print(text)


def progress(description: str, total: int | None, *, quiet: bool, in_bytes: bool = False) -> Any:
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
                BarColumn,
                DownloadColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            amount = DownloadColumn() if self._in_bytes else MofNCompleteColumn()
            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                amount,
                TimeRemainingColumn(),
                console=stderr.real,
                transient=True,
            )
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


def make_table(*columns: Any, **options: Any) -> Any:
    from rich.table import Table

    return Table(*columns, **options)


def make_column(header: str, **options: Any) -> Any:
    from rich.table import Column

    return Column(header, **options)


def key_column() -> Any:
    return make_column("key", no_wrap=True, overflow="fold")  # a key is copied and pasted: never cut it


def plain(value: Any) -> Any:
    return [plain(item) for item in value] if isinstance(value, tuple) else value


def show(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(plain(value))


def one_line(message: str) -> str:
    return " ".join(message.split())


# --- reports, as people read them ------------------------------------------------------------------

_STATUS_STYLE = {Status.WARM: "green", Status.COLD: "yellow", Status.STALE: "red", Status.BUILDING: "cyan"}


def fingerprint(report: Fingerprint, target: Target | None) -> None:
    table = make_table("fact", "value", "source", title="Facts", title_justify="left")
    for fact in report.facts:
        table.add_row(fact.name, show(fact.value), str(fact.source))
    console.print(table)
    table = make_table("layer", key_column(), title="Keys", title_justify="left")
    for layer, key in report.keys.items():
        table.add_row(layer, str(key))
    console.print(table)
    for change in report.mismatches:
        stderr.print(f"[bold red]mismatch[/] with {target.source if target else 'the target'}: {change}")


def check(report: CheckReport, out: Any = console) -> None:
    title = f"Check of {report.target.source}"
    if len(report.landings) > 1:
        lands = ", ".join(each.landing.label for each in report.landings)
        title += f": gpu = {report.target.request.written} lands on {lands}"
    table = make_table("layer", "gpu", "status", key_column(), title=title, title_justify="left")
    for layer in report.layers:
        style = _STATUS_STYLE[layer.status]
        table.add_row(layer.layer, _gpu(layer), f"[{style}]{layer.status}[/]", str(layer.key))
    out.print(table)
    for layer in report.layers:
        if layer.reason:
            out.print(
                f"[yellow]{_row(layer, report)}[/] is cold: {layer.reason} "
                f"(`cachekeeper unquarantine {layer.key}` restores it)"
            )
    for layer in report.layers:
        if layer.changes:
            out.print(f"[red]{_row(layer, report)}[/] is stale against {layer.nearest}:")
            for change in layer.changes:
                out.print(f"  {change}")
    for each in report.landings:
        inherited = sorted(fact.name for fact in each.facts if fact.source is Source.INHERITED)
        if each.observation is not None and inherited:
            seen = format_age(time.time() - each.observation.last_seen_at)
            out.print(
                f"Inherited from the fingerprint seen on {each.observation.gpu_type} "
                f"({each.observation.host}, {seen}): {', '.join(inherited)}"
            )
    for each in report.landings:
        unverified = each.unverified(report.target.needs)
        if unverified:
            out.print(
                f"[yellow]Unverified on {each.landing.gpu.name}:[/] nothing observed or declared "
                f"{', '.join(unverified)}; boot once on {each.landing.gpu.name} (or declare them) to verify these keys."
            )
    if report.ready and report.any_landing:
        out.print("[green]ready[/] (--any: every layer is warm on at least one GPU type)")
    elif report.ready:
        out.print("[green]ready[/]")
    else:
        waiting = ", ".join(_row(row, report) for row in report.layers if row.status is not Status.WARM)
        out.print(f"[red]not ready[/]: not warm: {waiting}")


def _row(row: LayerReport, report: CheckReport) -> str:
    """``compile on H200``; the layer alone where the deploy lands on one GPU type."""
    return row.layer if row.landing is None or len(report.landings) == 1 else f"{row.layer} on {row.landing}"


def _gpu(row: LayerReport) -> str:
    return "all" if row.landing is None else row.landing.label


def snapshot_tags(tags: dict[str, str]) -> None:
    """One tag alone, as it goes into the image's environment; one line per GPU type otherwise."""
    if len(tags) == 1:
        print(next(iter(tags.values())))
        return
    width = max(len(label) for label in tags)
    for label, tag in tags.items():
        print(f"{label:<{width}}  {tag}")
    first = next(iter(tags))
    if len(set(tags.values())) == 1:
        stderr.print("Every GPU type the deploy may land on has the same tag; Modal keeps a snapshot per GPU type.")
        return
    stderr.print(
        f"An image's environment holds one tag: cachekeeper.modal.snapshot_env() puts the first ({first}) "
        "there. The tags differ only in their GPU facts, so it changes whenever any of them does, and "
        "Modal keeps a snapshot per GPU type."
    )


def changes(found: Sequence[FactChange]) -> None:
    if not found:
        console.print("The two keys are made of the same facts.")
    for change in found:
        console.print(str(change))


# ``ls`` columns: fixed widths, so that a page can be printed before the next is read. The key
# comes last and is never cut (it is copied and pasted); a model wider than its column is.
_LAST_USED, _SIZE, _FILES, _MODEL_MIN, _MODEL_MAX = 14, 9, 7, 5, 40


def listing(pages: Iterable[Sequence[ArtifactSummary]], *, limit: int | None = None) -> None:
    """The artifacts as plain aligned columns, printed and flushed a page at a time: the first rows
    show at once, at any size. A reader that stops early (``| head``) ends the listing quietly."""
    now = time.time()
    out = sys.stdout
    count = size = files = 0
    width = 0
    try:
        for page in pages:
            if not width:
                width = min(_MODEL_MAX, max(_MODEL_MIN, *(len(_model(a)) for a in page)))
                header = f"{'last used':<{_LAST_USED}}  {'size':>{_SIZE}}  {'files':>{_FILES}}  {'model':<{width}}"
                out.write(f"{header}  key\n")
            lines = []
            for a in page:
                model = _model(a)
                if len(model) > width:
                    model = model[: width - 1] + "…"
                status = "  (deleting)" if a.state == DELETING else ""
                age, shown = format_age(now - a.last_used_at), format_bytes(a.bytes)
                counted = f"{a.files:,}"
                lines.append(
                    f"{age:<{_LAST_USED}}  {shown:>{_SIZE}}  {counted:>{_FILES}}  {model:<{width}}  {a.key}{status}\n"
                )
                size += a.bytes
                files += a.files
            count += len(page)
            out.write("".join(lines))
            out.flush()
        shown = " (--limit)" if limit is not None and count >= limit else ""
        out.write(f"{count} artifact(s){shown}, {format_bytes(size)}, {files:,} file(s)\n")
        out.flush()
    except BrokenPipeError:
        # The reader went away: say nothing more, and let the interpreter's last flush go nowhere.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, out.fileno())
        os.close(devnull)


def totals(layers: Mapping[str, Stored], roots: Sequence[RootFiles]) -> None:
    """What each layer's artifacts hold, and each root's files against its budget: after ``listing``."""
    for layer, stored in layers.items():
        console.print(
            f"{layer}: {stored.artifacts} artifact(s), {format_bytes(stored.bytes)}, {stored.files:,} file(s)"
        )
    root_files(roots)


def _model(artifact: ArtifactSummary) -> str:
    return artifact.model if artifact.model != "none" else "-"


def quarantined(entries: Sequence[Quarantined]) -> None:
    """The quarantined artifacts ``ls`` lists after the published ones."""
    if not entries:
        return
    now = time.time()
    console.print(
        f"[yellow]{len(entries)} quarantined[/] (`cachekeeper unquarantine KEY` restores one, "
        "`cachekeeper prune --quarantined` removes them):"
    )
    for entry in entries:
        console.print(f"  {entry.key} ({format_bytes(entry.bytes)}), {format_age(now - entry.at)}, after {entry.why()}")


def quarantine_removal(result: QuarantineRemoval) -> None:
    verb = "would remove" if result.dry_run else "removed"
    for entry in result.removed:
        console.print(f"{verb} the quarantined {entry.name} ({format_bytes(entry.bytes)})")
    for entry, reason in result.kept:
        console.print(f"[yellow]kept[/] the quarantined {entry.name}: {reason}")
    freed = "Would free" if result.dry_run else "Freed"
    console.print(f"{freed} {format_bytes(result.bytes)} in {len(result.removed)} quarantined artifact(s).")


def unquarantined(entry: Quarantined, path: Path, was: Path) -> None:
    console.print(f"Restored {entry.key} from {was} to {path}: published again; its strikes are gone.")


def prune(plan: PrunePlan, result: PruneResult | None = None) -> None:
    """A dry run (``result`` None) or what a prune did."""
    removed = plan.removals if result is None else result.removed
    verb = "would remove" if result is None else "removed"
    for artifact in removed:
        console.print(
            f"{verb} {artifact.key} ({format_bytes(artifact.bytes)}): {'; '.join(plan.reasons.get(artifact.key, ()))}"
        )
    for artifact in plan.kept:
        console.print(f"[green]keep[/] {artifact.key}: {'; '.join(plan.reasons.get(artifact.key, ()))}")
    for artifact, reason in result.skipped if result is not None else ():
        console.print(f"[yellow]kept[/] {artifact.key}: {reason}")
    if plan.over_budget:
        console.print(f"[yellow]Still {format_bytes(plan.over_budget)} over the size budget:[/] the rest must stay.")
    if plan.over_files:
        console.print(f"[yellow]Still {plan.over_files:,} file(s) over the file budget:[/] the rest must stay.")
    freed = plan.bytes if result is None else result.bytes
    console.print(f"{'Would free' if result is None else 'Freed'} {format_bytes(freed)} in {len(removed)} artifact(s).")
    left = plan.leftovers if result is None else result.leftovers
    if left:
        verb = "would clear" if result is None else "cleared"
        for name in left.partial_builds:
            console.print(f"{verb} the unfinished build {name}")
        for path in left.temporary_files:
            console.print(f"{verb} the temporary file {path}")
        for name in left.leases:
            console.print(f"{verb} the dead lease of {name}")


def synced(report: SyncReport) -> None:
    console.print(
        f"Folded {report.records} record(s) from {report.journals} journal(s); {report.artifacts} new artifact(s)."
        + (f" Skipped {report.unreadable_lines} unreadable line(s)." if report.unreadable_lines else "")
    )
    if report.tidied is not None:
        tidied(report.tidied)


def tidied(report: Tidied) -> None:
    """What a tidying sync removed; nothing when it removed nothing."""
    done = [
        f"forgot {report.uses:,} use record(s) of stopped processes" if report.uses else "",
        f"compacted {report.journals:,} folded journal(s) into daily files" if report.journals else "",
        f"summarised {report.events:,} event(s) from before {_day(report.summarised_before)} into daily counts"
        if report.events
        else "",
    ]
    if any(done):
        text = "; ".join(filter(None, done))
        console.print(text[0].upper() + text[1:] + ".")


def _day(at: float) -> str:
    from ..manifest import utc_day

    return utc_day(at)


def verification(report: VerifyReport) -> None:
    table = make_table("finding", "layer", make_column("artifact", overflow="fold"), "detail")
    for finding in report.findings:
        style = "red" if finding.problem else "cyan"
        files = finding.files
        shown = ", ".join(files[:3]) + (f" (+{len(files) - 3})" if len(files) > 3 else "")
        detail = finding.detail + (f": {shown}" if shown else "")
        table.add_row(f"[{style}]{finding.kind}[/]", finding.layer, finding.key or str(finding.path), detail)
    if report.findings:
        console.print(table)
    verdict = "[green]ok[/]" if report.ok else "[red]problems found[/]"
    console.print(f"Checked {report.checked} artifact(s), read {format_bytes(report.hashed_bytes)}: {verdict}")


def doctored(report: DoctorReport) -> None:
    if report.manifest == CREATED:
        console.print("There was no manifest: built a new one.")
    elif report.manifest == REPLACED:
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
    root_files(report.files)


def root_files(roots: Sequence[RootFiles]) -> None:
    """How many files each root holds, against its budget (a warning when over it)."""
    for root in roots:
        held = f"{root.path} holds {root.total:,} files"
        held += f" ({root.artifacts:,} in artifacts, {root.state:,} of cachekeeper's own)"
        if root.over:
            console.print(
                f"[yellow]warning:[/] {held}, over its budget of {root.budget:,}: "
                f"`cachekeeper prune --max-files {root.budget}` removes the least recently used"
            )
        else:
            console.print(f"{held}, within its budget of {root.budget:,}")


def inspection(found: Inspection) -> None:
    a, now = found.artifact, time.time()
    console.print(f"[bold]{a.key}[/]  {a.layer}, {a.model}")
    if found.state == "quarantined":
        console.print("  [yellow]quarantined[/]: this is its newest quarantined copy; the key itself is cold")
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
    for strike in found.strikes:
        console.print(f"  [red]strike[/] {format_age(now - strike.at)} by {strike.host}: {strike.reason}")
    for entry in found.quarantined:
        console.print(f"  [yellow]quarantined[/] {format_age(now - entry.at)} as {entry.name}, after {entry.why()}")
    if found.vllm:
        right = {"justify": "right"}
        table = make_table(
            "vLLM hash",
            "rank",
            "prefix",
            make_column("files", **right),
            make_column("size", **right),
            "factors",
            title="vLLM compile caches",
            title_justify="left",
        )
        for d in found.vllm:
            recorded = "recorded" if d.factors is not None else "-"
            table.add_row(d.hash, d.rank, d.prefix or "-", str(d.files), format_bytes(d.bytes), recorded)
        console.print(table)
    for aot in found.aot:
        ranks = ", ".join(aot.ranks) or "no rank"
        console.print(f"vLLM AOT compile {aot.hash[:16]}…: {ranks}, {aot.files} file(s), {format_bytes(aot.bytes)}")
    for cache in found.inductor:
        console.print(
            f"Inductor cache {cache.relpath}/: FX graphs {cache.fxgraph}, "
            f"AOTAutograd entries {cache.aotautograd}, {format_bytes(cache.bytes)}"
        )
    if found.triton_kernels:
        console.print(f"Triton: {found.triton_kernels} kernel(s)")
    if found.inner_misses:
        console.print(f"[yellow]{found.inner_misses} boot(s) hit this key, yet vLLM compiled anew inside it[/]")
    if found.factor_changes:
        console.print("[yellow]vLLM hashed this key more than one way[/] (it missed its own cache inside ours):")
        for c in found.factor_changes:
            where = f"{c.rank}/{c.prefix or '-'}"
            console.print(f"  {where} {c.old_hash} → {c.new_hash}: {c.factor}: {show(c.old)} → {show(c.new)}")


def statistics(report: Stats) -> None:
    now = time.time()
    right = {"justify": "right"}
    numbers = ("hits", "misses", "builds", "hit rate", "built", "pruned", "stored", "files")
    since = f"Since {format_age(now - report.since) if report.since else 'the beginning'}"
    table = make_table(
        "layer", "model", *(make_column(name, **right) for name in numbers), title=since, title_justify="left"
    )
    for row in report.layers:
        rate = f"{row.hit_rate:.0%}" if row.hit_rate is not None else "-"
        table.add_row(
            row.layer,
            row.model,
            str(row.hits),
            str(row.misses),
            str(row.builds),
            rate,
            format_bytes(row.built_bytes),
            format_bytes(row.pruned_bytes),
            f"{format_bytes(row.stored_bytes)} ({row.stored})",
            f"{row.stored_files:,}",
        )
    console.print(table)
    for m in report.models:
        cold = f"{m.mean_cold_seconds:.1f} s" if m.mean_cold_seconds is not None else "never seen"
        warm = f"{m.mean_warm_seconds:.1f} s" if m.mean_warm_seconds is not None else "-"
        saved = _saved(m.saved_seconds) if m.saved_seconds is not None else "unknown (no cold boot recorded)"
        console.print(
            f"{m.model}: {m.boots} boot(s), {m.warm_boots} warm (mean {warm}), {m.cold_boots} cold (mean {cold}); "
            f"saved {saved}"
        )
        if m.inner_miss_rate is not None:
            style = "yellow" if m.inner_misses else "green"
            console.print(
                f"  [{style}]inner-miss rate {m.inner_miss_rate:.0%}[/]: vLLM compiled anew in {m.inner_misses} "
                f"of {m.compile_hits} compile hit(s)"
                + (" (cachekeeper inspect KEY says which factors differed)" if m.inner_misses else "")
            )
    console.print(f"Boot time saved: {_saved(report.saved_seconds)}")
    root_files(report.roots)
    if report.partial_boots and report.detailed_since is not None:
        console.print(
            f"[yellow]Events before {_day(report.detailed_since)} are kept as daily counts:[/] the table counts "
            "them, the boots and boot time saved above do not."
        )


def _saved(seconds: float) -> str:
    return format_duration(seconds, words=True)


def weights(revisions: Sequence[WeightsRevision], hf_cache: Path) -> None:
    if not revisions:
        console.print(f"No model revisions in {hf_cache}")
        return
    now = time.time()
    table = make_table(key_column(), "revision", make_column("size", justify="right"), "last used", "notes")
    for revision in revisions:
        notes = [note for note, on in (("pinned", revision.pinned), ("not recorded", not revision.recorded)) if on]
        if revision.snapshots:
            notes.append(f"{len(revision.snapshots)} snapshot(s) built from it")
        a = revision.artifact
        table.add_row(
            a.key, revision_sha(a)[:8], format_bytes(a.bytes), format_age(now - a.last_used_at), ", ".join(notes)
        )
    console.print(table)
