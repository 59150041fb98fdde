"""``verify``: check every artifact against the sizes and checksums recorded when it was published.

Findings, worst first:

- ``corrupt``: a recorded file's size or content differs, or its checksum record is damaged;
- ``missing``: a recorded file is gone while its artifact is still there;
- ``ghost``: the manifest lists an artifact whose sidecar or directory is gone;
- ``unindexed``: a sidecar the manifest does not list (``cachekeeper doctor`` indexes it);
- ``orphan``: something on disk no sidecar or manifest row accounts for (a build that died, a
  Hub revision nobody recorded, a checksum record left behind);
- ``growth``: new files in a warm artifact (a batch size compiled lazily on a later boot). Not a
  problem: a warm cache may grow, it must never change what it had;
- ``unrecorded``: published before checksums were recorded; nothing to check it against.

verify reads and says what to do; the one thing it changes is the size and file count the
manifest records for an artifact that grew, which ``ls``, ``stats`` and file budgets count from.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from .errors import ManifestError, UnsafePath
from .hub import hub_revisions
from .layers import DEFAULT_LAYERS, WEIGHTS
from .leases import leases_for
from .liveness import Sightings, Witness
from .manifest import Manifest
from .scope import EVERYTHING, Scope
from .store import (
    DELETING,
    Artifact,
    Root,
    Roots,
    artifact_path,
    foreign_links,
    hash_files,
    iter_sidecars,
    list_files,
    read_checksums,
)
from .store.layout import CHECKSUMS
from .uses import users
from .values import Value

CORRUPT = "corrupt"
MISSING = "missing"
GHOST = "ghost"
UNINDEXED = "unindexed"
ORPHAN = "orphan"
GROWTH = "growth"
UNRECORDED = "unrecorded"
PROBLEMS = (CORRUPT, MISSING, GHOST, UNINDEXED, ORPHAN)


class Finding(Value):
    kind: str
    layer: str
    key: str | None  # None for an orphan that no key names
    path: Path
    detail: str
    files: tuple[str, ...] = ()  # the files concerned, relative to ``path``

    @property
    def problem(self) -> bool:
        return self.kind in PROBLEMS

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "problem": self.problem,
            "layer": self.layer,
            "key": self.key,
            "path": str(self.path),
            "detail": self.detail,
            "files": list(self.files),
        }


class VerifyReport(Value):
    findings: tuple[Finding, ...]
    checked: int  # artifacts whose files were compared
    hashed_bytes: int

    @property
    def ok(self) -> bool:
        return not any(finding.problem for finding in self.findings)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "checked": self.checked,
            "hashed_bytes": self.hashed_bytes,
            "findings": [finding.to_json() for finding in self.findings],
        }


def verify(
    manifest: Manifest,
    roots: Roots,
    *,
    scope: Scope = EVERYTHING,
    layers: Iterable[str] = (),
    progress: Callable[[int], None] | None = None,
    total: Callable[[int], None] | None = None,
) -> VerifyReport:
    """Verify the artifacts in scope. ``layers`` adds layer names to look for orphans in (a target's
    custom layers); ``total`` is told how many bytes will be read, then ``progress`` each time some are."""
    listed = [artifact for artifact in manifest.artifacts(state=None) if scope.matches(artifact)]
    deleting = {key for _, key in manifest.keys_in_state(DELETING)}
    published = [a for a in listed if a.key not in deleting]
    findings: list[Finding] = []
    sidecars: dict[str, Artifact] = {}
    unreadable: set[str] = set()
    for root in roots.all():
        for path, parsed in iter_sidecars(root):
            if isinstance(parsed, Artifact) and roots.for_layer(parsed.layer) == root:
                sidecars[parsed.key] = parsed
            elif not isinstance(parsed, Artifact):
                findings.append(Finding(CORRUPT, path.parent.name, path.stem, path, f"unreadable sidecar: {parsed}"))
                unreadable.add(path.stem)
    if total is not None:
        total(sum(a.bytes for a in published if a.key in sidecars))
    hashed = 0
    for artifact in published:
        found, read, counted = _check(artifact, roots.for_layer(artifact.layer), sidecars.get(artifact.key), progress)
        findings.extend(found)
        hashed += read
        if counted is not None and counted != (artifact.bytes, artifact.files):
            _record_counts(manifest, artifact.key, *counted)
    if not (scope.keys or scope.model):  # orphans and unindexed sidecars belong to no model or key
        indexed = {a.key for a in manifest.artifacts(state=None)}
        for key, artifact in sorted(sidecars.items()):
            if key not in indexed and (scope.layer is None or artifact.layer == scope.layer):
                findings.append(
                    Finding(
                        UNINDEXED,
                        artifact.layer,
                        key,
                        _path(roots, artifact),
                        "published, but the manifest does not list it: run `cachekeeper doctor`",
                    )
                )
        names = (
            {scope.layer}
            if scope.layer
            else {*(each.name for each in DEFAULT_LAYERS), *layers, *(a.layer for a in listed)}
        )
        # A key whose sidecar cannot be read is reported as such above, not as an orphan.
        known = {a.key for a in manifest.artifacts(state=None)} | set(sidecars) | unreadable
        artifacts = {a.key: a for a in listed} | sidecars
        with Sightings(manifest) as witness:  # is a lease or use still live? judged by this host's clock
            findings.extend(_orphans(roots, manifest, sorted(names), known, artifacts, witness))
    order = {kind: index for index, kind in enumerate((*PROBLEMS, GROWTH, UNRECORDED))}
    findings.sort(key=lambda f: (order[f.kind], f.layer, f.key or "", str(f.path)))
    return VerifyReport(tuple(findings), len(published), hashed)


def _path(roots: Roots, artifact: Artifact) -> Path:
    """Where ``artifact`` is, to show: its own directory, or (for a record refused as unsafe) the
    layer directory, never a path the record itself names."""
    root = roots.for_layer(artifact.layer)
    try:
        return artifact_path(root, artifact)
    except UnsafePath:
        return root.layer_dir(artifact.layer)


def _check(
    artifact: Artifact, root: Root, sidecar: Artifact | None, progress: Callable[[int], None] | None
) -> tuple[list[Finding], int, tuple[int, int] | None]:
    """Its findings, the bytes read to hash it, and its (bytes, files) as found on disk."""

    def finding(kind: str, detail: str, files: Iterable[str] = ()) -> Finding:
        return Finding(kind, artifact.layer, artifact.key, path, detail, tuple(sorted(files)))

    try:
        path = artifact_path(root, artifact)
    except UnsafePath as error:
        path = root.layer_dir(artifact.layer)
        return [finding(CORRUPT, f"its recorded path is unsafe: {error}")], 0, None
    if sidecar is None:
        return [finding(GHOST, "the manifest lists it, but its sidecar is gone: no boot will use it")], 0, None
    if path.is_symlink():
        return [finding(CORRUPT, "its directory is a symbolic link, not followed: no boot will use it")], 0, None
    if not path.is_dir():
        return [finding(GHOST, "the manifest lists it, but its directory is gone")], 0, None
    within = root.path if artifact.layer == WEIGHTS else None
    on_disk = list_files(path, follow_links_within=within)
    links = foreign_links(path, follow_links_within=within)
    recorded = read_checksums(root, sidecar)
    if recorded is None:
        if sidecar.checksum is None:
            return [finding(UNRECORDED, "published before checksums were recorded: sizes only")], 0, None
        return [finding(CORRUPT, "its checksum record is missing or damaged: its files cannot be checked")], 0, None
    missing = [name for name in recorded.files if name not in on_disk]
    resized = [name for name, (size, _) in recorded.files.items() if name in on_disk and on_disk[name][0] != size]
    to_hash = {on_disk[name][1]: name for name in recorded.files if name in on_disk and name not in resized}
    digests = hash_files(to_hash, progress=progress)
    changed = [to_hash[real] for real, digest in digests.items() if digest != recorded.files[to_hash[real]][1]]
    grown = [name for name in on_disk if name not in recorded.files]
    findings = []
    if resized or changed:
        detail = "; ".join(
            part
            for part in (
                f"{len(resized)} file(s) changed size" if resized else "",
                f"{len(changed)} file(s) changed content" if changed else "",
            )
            if part
        )
        findings.append(finding(CORRUPT, detail, resized + changed))
    if links:
        detail = f"{len(links)} symbolic link(s) inside it, not followed: no boot will use it"
        findings.append(finding(CORRUPT, detail, links))
    if missing:
        findings.append(finding(MISSING, f"{len(missing)} recorded file(s) are gone", missing))
    if grown:
        size = sum(on_disk[name][0] for name in grown)
        findings.append(finding(GROWTH, f"{len(grown)} new file(s), {size} bytes, since it was published", grown))
    counted = (sum(size for size, _ in on_disk.values()), len(on_disk))
    return findings, sum(recorded.files[name][0] for name in to_hash.values()), counted


def _record_counts(manifest: Manifest, key: str, size: int, files: int) -> None:
    """Bring the recorded size and file count up to date (a warm artifact grows): ``ls``, ``stats``
    and the budgets count from these, not by walking the files. On a read-only manifest they stay."""
    try:
        manifest.set_counts(key, size, files)
    except (ManifestError, OSError):
        pass


def _orphans(
    roots: Roots,
    manifest: Manifest,
    layers: Sequence[str],
    known: set[str],
    artifacts: dict[str, Artifact],
    witness: Witness,
) -> list[Finding]:
    findings = []
    for name in layers:
        root = roots.for_layer(name)
        if name == WEIGHTS:
            findings.extend(_hub_orphans(roots, manifest, known, witness))
            continue
        directory = root.layer_dir(name)
        if not directory.is_dir() or directory.is_symlink():
            continue
        for entry in sorted(os.scandir(directory), key=lambda e: e.name):
            if entry.name in known or _busy(root, manifest, name, entry.name, witness):
                continue
            findings.append(
                Finding(
                    ORPHAN,
                    name,
                    None,
                    Path(entry.path),
                    "no sidecar or manifest row: a build that died, or a stray file",
                )
            )
    for root in roots.all():
        for _, directory in root.state_layers(CHECKSUMS):
            for path in sorted(directory.glob("*.json")):
                key, _, checksum = path.stem.rpartition(".")
                owner = artifacts.get(key)
                if owner is None and key in known:
                    continue  # its sidecar cannot be read (reported above): which checksum it names is unknown
                if owner is None or owner.checksum != checksum:
                    findings.append(
                        Finding(ORPHAN, path.parent.name, key or None, path, "a checksum record no artifact uses")
                    )
    return findings


def _hub_orphans(roots: Roots, manifest: Manifest, known: set[str], witness: Witness) -> list[Finding]:
    root = roots.for_layer(WEIGHTS)
    return [
        Finding(
            ORPHAN,
            WEIGHTS,
            revision.key,
            root.path / revision.relpath,
            f"a revision of {revision.model} in the Hub cache that no boot recorded",
        )
        for revision in hub_revisions(roots)
        if revision.key not in known and not _busy(root, manifest, WEIGHTS, revision.key, witness)
    ]


def _busy(root: Root, manifest: Manifest, layer: str, key: str, witness: Witness) -> bool:
    """Being built (a live lease) or downloaded (a live use): not an orphan yet."""
    if leases_for(root, manifest, witness=witness).holder(layer, key) is not None:
        return True
    return bool(users(root, layer, key, witness))
