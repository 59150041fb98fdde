"""One layer's part in a boot: look for its key, build it under a lease, or boot cold privately;
on exit, publish what was built (sidecar last) and record what happened."""

from __future__ import annotations

import atexit
import functools
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .. import facts as f
from .. import store, uses, vllm_caches
from ..errors import UnsafePath
from ..facts import Facts
from ..keys import CacheKey
from ..layers import SNAPSHOT, WEIGHTS, Layer
from ..processes import process_gone
from ..records import Kind, Record
from ..store import Artifact, Root, UnreadableSidecar, builder_id, descriptors, look_up_sidecar, read_sidecar
from ..values import Value
from .recording import Writer

if TYPE_CHECKING:
    from ..leases import Lease, LeaseInfo, Leases
    from ..manifest import Manifest
    from ..store import Contents

logger = logging.getLogger("cachekeeper")

HIT = "hit"  # a published artifact is in use
BUILD = "build"  # nothing published yet: this process builds it in place and publishes on exit
PRIVATE = "private"  # another process is building it: this one boots cold in a private directory
DOWNLOAD = "download"  # weights not recorded yet: huggingface_hub downloads into the shared cache

VLLM_CACHE_ROOT = "VLLM_CACHE_ROOT"  # a layer that points it somewhere can tell vLLM's own misses

# A waiter looks again after 0.2 s, then less and less often: on a Modal Volume each look is a reload.
_FIRST_POLL_SECONDS = 0.2
_LAST_POLL_SECONDS = 2.0


class LayerUse(Value):
    layer: str
    key: CacheKey
    status: str  # HIT, BUILD, PRIVATE or DOWNLOAD
    path: Path  # the directory this layer's variables point into

    @property
    def hit(self) -> bool:
        return self.status == HIT


class Claim:
    """One layer's part in a boot, and what must happen to it on exit. A plain class, not a
    dataclass: a boot defines it (see values.py)."""

    __slots__ = ("depends_on", "layer", "lease", "registration", "root", "use", "vllm_dirs_at_hit")

    def __init__(self, layer: Layer, use: LayerUse, root: Root, lease: Lease | None = None) -> None:
        self.layer = layer
        self.use = use
        self.root = root
        self.lease = lease
        self.depends_on: tuple[str, ...] = ()  # keys a snapshot is built from
        self.registration: uses.Registration | None = None
        # On a hit: vLLM's hash directories in the artifact then, to tell at exit whether vLLM
        # compiled anew inside it (an inner miss: our key said warm, vLLM's own key did not).
        self.vllm_dirs_at_hit: frozenset[str] | None = None

    def __repr__(self) -> str:
        return f"Claim({self.use!r})"

    def finish(self, writer: Writer, facts: Facts, boot_seconds: float) -> None:
        """Publish what was built and record what happened. A disk that fails now (full, gone
        read-only) costs the cache, not the boot: the server goes on, nothing is half published,
        and the next boot builds the key again."""
        try:
            self._finish(writer, facts, boot_seconds)
        except OSError as error:
            published = read_sidecar(self.root, self.layer.name, str(self.use.key)) is not None
            logger.warning(
                "cachekeeper: %s %s: %s%s",
                "could not record" if published else "did not publish",
                self.use.key,
                error,
                "" if published else "; a later boot builds it again (once this process is gone, or prune cleared it)",
            )

    def _finish(self, writer: Writer, facts: Facts, boot_seconds: float) -> None:
        name, key = self.layer.name, str(self.use.key)
        model = str(facts.value(f.MODEL, f.NONE))

        def record(kind: Kind, size: int | None = None) -> None:
            writer.append(Record.new(kind, layer=name, key=key, model=model, seconds=boot_seconds, bytes=size))

        if self.use.status == HIT:
            record(Kind.HIT)
            self._record_inner_miss(writer, model, boot_seconds)
        elif self.use.status == BUILD:
            if self.lease is not None and not self.lease.held():
                # Taken over while this process stalled: the directory is another builder's now.
                logger.warning("cachekeeper: lost the build lease of %s; not publishing it", key)
                record(Kind.MISS)
                return
            artifact, contents = _artifact(self.use, f"{name}/{key}", self.use.path, facts, self.depends_on)
            record(Kind.PUBLISHING)
            writer.sync()  # the intent is on disk before the sidecar: a crash between leaves it to sync
            if store.publish(self.root, artifact, contents):
                record(Kind.PUBLISHED, artifact.bytes)
        elif self.use.status == DOWNLOAD:
            parts = self.root.hub_snapshot_parts(model, str(facts.value(f.MODEL_REVISION)))
            relpath, snapshot = "/".join(parts), self.root.path.joinpath(*parts)
            if not snapshot.is_dir() or not any(snapshot.iterdir()):
                record(Kind.MISS)  # the boot never downloaded them: nothing to record
                return
            artifact, contents = _artifact(self.use, relpath, snapshot, facts, within=self.root.path)
            record(Kind.PUBLISHING)
            writer.sync()
            if store.publish(self.root, artifact, contents):
                record(Kind.PUBLISHED, artifact.bytes)
            else:
                record(Kind.HIT)  # another boot recorded the same download first
        else:
            record(Kind.MISS)

    def _record_inner_miss(self, writer: Writer, model: str, boot_seconds: float) -> None:
        vllm_root = vllm_cache_root(self.layer, self.use.path)
        if self.vllm_dirs_at_hit is None or vllm_root is None:
            return
        new = sorted(vllm_caches.hash_dirs(vllm_root) - self.vllm_dirs_at_hit)
        if not new:
            return
        changes = vllm_caches.new_factor_changes(vllm_caches.vllm_dirs(vllm_root), new)
        factors = tuple(dict.fromkeys((c.factor, _storable(c.old), _storable(c.new)) for c in changes))
        key = str(self.use.key)
        writer.append(
            Record.new(
                Kind.INNER_MISS,
                layer=self.layer.name,
                key=key,
                model=model,
                seconds=boot_seconds,
                dirs=tuple(new),
                factors=factors,
            )
        )
        logger.warning(
            "cachekeeper: %s was warm, yet vLLM compiled again inside it (new: %s)%s",
            key,
            ", ".join(new),
            "; it hashed differently: " + "; ".join(f"{n}: {o} → {w}" for n, o, w in factors) if factors else "",
        )

    def abandon(self) -> None:
        """Publish nothing; remove what this process half built while it still holds the lease."""
        if self.registration is not None:
            self.registration.release()
        if self.use.status == BUILD and (self.lease is None or self.lease.held()):
            store.remove_tree(self.root, self.root.artifact_parts(self.layer.name, str(self.use.key)))

    def release(self) -> None:
        if self.lease is not None:
            self.lease.release()


def _artifact(
    use: LayerUse,
    relpath: str,
    path: Path,
    facts: Facts,
    depends_on: tuple[str, ...] = (),
    *,
    within: Path | None = None,
) -> tuple[Artifact, Contents]:
    """The record of what was built, with every file's checksum. A Hub snapshot's files are links
    into the repo's blobs: ``within`` is the root they may be followed into, never out of."""
    contents = store.scan_contents(path, follow_links_within=within)
    now = time.time()
    artifact = Artifact(
        key=str(use.key),
        layer=use.layer,
        model=str(facts.value(f.MODEL, f.NONE)),
        relpath=relpath,
        bytes=contents.bytes,
        files=contents.count,
        created_at=now,
        last_used_at=now,
        builder=builder_id(),
        facts=use.key.facts.values(),
        depends_on=depends_on,
        checksum=contents.checksum,
    ).checked()
    return artifact, contents


class Waiting:
    """How a boot waits for another builder, and how it looks again at the shared roots."""

    def __init__(self, on_busy: str, timeout: float, refresh: Callable[[], object] | None) -> None:
        self.on_busy = on_busy
        self.deadline = time.monotonic() + timeout
        self._refresh = refresh
        self._pause = _FIRST_POLL_SECONDS

    def refresh(self) -> None:
        if self._refresh is not None:
            self._refresh()

    def gives_up(self) -> bool:
        return self.on_busy == "cold" or time.monotonic() >= self.deadline

    def pause(self) -> None:
        time.sleep(max(0.0, min(self._pause, self.deadline - time.monotonic())))
        self._pause = min(self._pause * 1.5, _LAST_POLL_SECONDS)
        self.refresh()


def lease_mechanism(
    given: Leases | None, root: Root, manifest: Manifest | None, ttl: float | None
) -> Callable[[], Leases]:
    """The lease mechanism to build with, made once and only when a key is cold: a warm hit takes
    no lease, and does not even load the module."""

    @functools.cache
    def mechanism() -> Leases:
        if given is not None:
            return given
        from ..leases import DEFAULT_TTL, leases_for

        return leases_for(root, manifest, DEFAULT_TTL if ttl is None else ttl)

    return mechanism


def claim(layer: Layer, key: CacheKey, root: Root, leases: Callable[[], Leases], waiting: Waiting) -> Claim:
    """This boot's use of one layer. The use is registered before the sidecar is read: prune
    removes the sidecar before it looks for uses a last time, so either prune sees this use and
    keeps the artifact, or this boot sees no sidecar (see prune.execute)."""
    registration = uses.register(root, layer.name, str(key))
    try:
        found = _look(layer, key, root, leases, waiting)
    except BaseException:
        registration.release()
        raise
    if found.use.status == PRIVATE:
        registration.release()  # nothing shared is used
    else:
        found.registration = registration
    vllm_root = vllm_cache_root(layer, found.use.path)
    if found.use.status == HIT and vllm_root is not None:
        found.vllm_dirs_at_hit = vllm_caches.hash_dirs(vllm_root)
    return found


def _look(layer: Layer, key: CacheKey, root: Root, leases: Callable[[], Leases], waiting: Waiting) -> Claim:
    if layer.name == WEIGHTS:
        found = look_up_sidecar(root, WEIGHTS, str(key))
        if isinstance(found, UnreadableSidecar):
            return private_claim(layer, key, root, _unreadable(found))
        status = HIT if found is not None else DOWNLOAD
        return Claim(layer, LayerUse(WEIGHTS, key, status, root.layer_dir(WEIGHTS)), root)
    parts = root.artifact_parts(layer.name, str(key))
    directory, relpath = root.path.joinpath(*parts), "/".join(parts)
    while True:
        found = look_up_sidecar(root, layer.name, str(key))
        if isinstance(found, UnreadableSidecar):
            return private_claim(layer, key, root, _unreadable(found))
        if found is not None:
            if _leads_out(root, parts, layer):
                return private_claim(layer, key, root)
            return Claim(layer, LayerUse(layer.name, key, HIT, directory), root)
        lease = leases().acquire(layer.name, str(key))
        if lease is not None:
            try:
                # Another builder may have published between our look and our lease.
                found = look_up_sidecar(root, layer.name, str(key))
                if isinstance(found, Artifact):
                    lease.release()
                    continue
                if isinstance(found, UnreadableSidecar):
                    lease.release()
                    return private_claim(layer, key, root, _unreadable(found))
                # Whatever is here was left by a build that was never published: never trusted.
                # It is cleared only when whoever wrote it is proven gone; a builder that stalled
                # past its lease may still be writing into it, a server may still read it.
                # A link in place of the directory goes as a link; one above it is refused.
                if os.path.lexists(directory):
                    writer = _may_still_write(root, layer.name, str(key), lease.previous)
                    if writer is not None:
                        lease.release()
                        return private_claim(
                            layer, key, root, f"{relpath} was left unfinished, and {writer}: not clearing it"
                        )
                    store.remove_tree(root, parts)
                directory.mkdir(parents=True)
            except UnsafePath as error:
                lease.release()
                logger.warning("cachekeeper: not building %s: %s; booting cold instead", relpath, error)
                return private_claim(layer, key, root)
            except BaseException:
                lease.release()
                raise
            return Claim(layer, LayerUse(layer.name, key, BUILD, directory), root, lease)
        if waiting.gives_up():
            return private_claim(layer, key, root)
        waiting.pause()


def vllm_cache_root(layer: Layer, path: Path) -> Path | None:
    """Where the layer points VLLM_CACHE_ROOT inside ``path``; None when it does not."""
    subdirectory = dict(layer.env).get(VLLM_CACHE_ROOT)
    if subdirectory is None:
        return None
    return path / subdirectory if subdirectory else path


def _storable(value: object) -> f.FactValue:
    """A factor's value as a record holds it: plain values as they are, anything else as JSON."""
    try:
        return f.freeze(value)
    except TypeError:
        return json.dumps(value, sort_keys=True, default=str)


def _may_still_write(root: Root, layer: str, key: str, previous: LeaseInfo | None) -> str | None:
    """Who may still write into or read from the unfinished build of ``key``, in words; None when
    everyone who could is proven gone: the lease's previous holder, and every other use."""
    if previous is None:
        return "no lease record says who built it"
    if not process_gone(previous.process):
        return f"its builder {previous.owner} may still be running"
    others = [use for use in uses.users(root, layer, key) if not uses.mine(use)]
    if others:
        return f"it is in use by {others[0].owner}"
    return None


def _unreadable(found: UnreadableSidecar) -> str:
    return f"its sidecar {found.path} cannot be read ({found.reason}): not using it, nor clearing it"


def private_dir(layer: str) -> Path:
    """A fresh temporary directory for ``layer``, this process's alone, removed at exit."""
    path = Path(tempfile.mkdtemp(prefix=f"cachekeeper-{layer}-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def private_claim(layer: Layer, key: CacheKey, root: Root, why: str | None = None) -> Claim:
    """``layer`` booted cold in a private directory: what a boot does whenever the shared cache
    cannot be used safely (another process builds the key, the root is read-only or broken, the
    artifact has struck out). ``why`` is logged as one warning line."""
    if why is not None:
        logger.warning("cachekeeper: %s; %s boots cold in a private directory", why, layer.name)
    return Claim(layer, LayerUse(layer.name, key, PRIVATE, private_dir(layer.name)), root)


def _leads_out(root: Root, parts: tuple[str, ...], layer: Layer) -> bool:
    """Whether the key's directory, or a directory in it that a cache variable will point at, is
    (or is reached through) a symbolic link, dangling or not: the boot would read and write
    wherever it points, outside the root. Such an artifact is not used."""
    subdirectories = {(sub,) for _, sub in layer.env if sub}
    try:
        descriptors.refuse_links(root.path, parts, subdirectories)
    except UnsafePath as error:
        logger.warning("cachekeeper: not using %s: %s; booting cold instead", "/".join(parts), error)
        return True
    return False


def record_dependencies(claims: Sequence[Claim]) -> None:
    """For housekeeping: a snapshot is built from the other layers' artifacts (kept as long as it
    lives)."""
    for each in claims:
        if each.layer.name == SNAPSHOT:
            each.depends_on = tuple(str(other.use.key) for other in claims if other is not each)
