"""``activate()``: the cache layers of one boot, inside ``@modal.enter`` or any Python process.

::

    with cachekeeper.activate(root="/cache", model="Qwen/Qwen2.5-0.5B-Instruct",
                              revision="main", engine={"max_model_len": 4096}) as ck:
        llm = vllm.LLM(model=..., revision=ck.facts.value("model.revision"), ...)

On entry: fingerprint this process (NVML and package metadata, no torch or vllm import), derive
each layer's key, point the cache variables at the key's directories, and say per layer whether
it was a hit. On a clean exit: publish what was built (sidecar last) and journal what happened.
On an exception: publish nothing, and remove what was half built.
"""

from __future__ import annotations

import atexit
import functools
import importlib.util
import logging
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, Protocol

from . import facts as f
from . import journal, uses
from .errors import CachekeeperError, UnsafePath, UsageError
from .facts import Fact, Facts, observe
from .keys import CacheKey, FactChange, derive_keys
from .layers import COMPILE, DEFAULT_LAYERS, SNAPSHOT, WEIGHTS, Layer
from .store import (
    Artifact, Contents, Root, Roots, builder_id, check_state, default_root, publish, read_sidecar, remove_tree,
    scan_contents,
)  # fmt: skip

if TYPE_CHECKING:
    from .leases import Lease, Leases
    from .manifest import Manifest
    from .target import Target

logger = logging.getLogger("cachekeeper")

HIT = "hit"  # a published artifact is in use
BUILD = "build"  # nothing published yet: this process builds it in place and publishes on exit
PRIVATE = "private"  # another process is building it: this one boots cold in a private directory
DOWNLOAD = "download"  # weights not recorded yet: huggingface_hub downloads into the shared cache

# A waiter looks again after 0.2 s, then less and less often: on a Modal Volume each look is a reload.
_FIRST_POLL_SECONDS = 0.2
_LAST_POLL_SECONDS = 2.0


class LayerUse(NamedTuple):
    layer: str
    key: CacheKey
    status: str  # HIT, BUILD, PRIVATE or DOWNLOAD
    path: Path  # the directory this layer's variables point into

    @property
    def hit(self) -> bool:
        return self.status == HIT


@dataclass
class Activation:
    """What ``activate()`` gives the caller: facts, keys, and each active layer's use."""

    facts: Facts
    keys: dict[str, CacheKey]
    layers: dict[str, LayerUse]
    env: dict[str, str]
    mismatches: tuple[FactChange, ...]
    _discarded: bool = field(default=False, repr=False)

    @property
    def hits(self) -> dict[str, bool]:
        return {name: use.hit for name, use in self.layers.items()}

    def hit(self, layer: str) -> bool:
        return self.layers[layer].hit

    def discard(self) -> None:
        """Publish nothing on exit, as if the block had failed (``cachekeeper run`` on exit ≠ 0)."""
        self._discarded = True


@contextmanager
def activate(
    root: str | os.PathLike[str] | None = None,
    *,
    target: str | os.PathLike[str] | Target | None = None,
    roots: Mapping[str, str | os.PathLike[str]] | None = None,
    model: str | None = None,
    revision: str | None = None,
    engine: Mapping[str, Any] | None = None,
    image: str | None = None,
    layers: Sequence[str] | None = None,
    on_busy: Literal["wait", "cold"] = "wait",
    wait_timeout: float = 900.0,
    lease_ttl: float | None = None,
    leases: Leases | None = None,
    db: str | None = None,
    probe_gpu: bool = True,
    refresh: Callable[[], object] | None = None,
    commit: Callable[[], object] | None = None,
) -> Iterator[Activation]:
    """Use the cache for one boot. Arguments override what ``target`` declares.

    ``roots`` puts layers on roots of their own (a Volume each), over the target's ``[roots]``.
    ``layers`` chooses the layers to use (default: the target's, else weights when a model is
    given, and compile). When another process is building a key, ``on_busy="wait"`` waits up to
    ``wait_timeout`` seconds for it to publish, then boots cold; ``"cold"`` boots cold at once.
    Either way this process never writes into a directory another is building.

    ``leases`` is the lease mechanism (default: files in each root, or the manifest's table when
    ``db`` / ``$CACHEKEEPER_DB`` is a server database, which this process then also writes
    directly instead of a journal). ``probe_gpu=False`` takes the GPU facts from the target
    instead of NVML: for a ``snap=True`` hook of a CPU-only memory snapshot. ``refresh`` is
    called before every look at the shared roots and ``commit`` after publishing, before any
    lease is released (on Modal: ``Volume.reload`` and ``Volume.commit``; see cachekeeper.modal).
    """
    started = time.monotonic()
    if isinstance(target, (str, os.PathLike)):
        from .target import load_target  # a warm boot without a target file never parses TOML

        target = load_target(Path(target))
    per_layer = {**(target.roots if target else {}), **{k: Path(v) for k, v in (roots or {}).items()}}
    cache_roots = Roots.at(Path(root) if root is not None else default_root(), per_layer)
    model = model if model is not None else (target.model if target else None)
    revision = revision if revision is not None else (target.revision if target else None)
    engine = engine if engine is not None else (target.engine if target else {})
    image = image if image is not None else (target.image if target else None)
    facts = observe(
        model=model, revision=revision, engine=engine, image=image,
        hf_cache=cache_roots.for_layer(WEIGHTS).layer_dir(WEIGHTS),
        gpu=None if probe_gpu else declared_gpu_facts(target),
    )  # fmt: skip
    known = target.layers if target else DEFAULT_LAYERS
    keys = derive_keys(facts, known)
    declared = target.declared_facts() if target else []
    if not probe_gpu:  # the GPU facts were copied from the target: comparing them proves nothing
        declared = [fact for fact in declared if not _is_gpu_fact(fact.name)]
    mismatches = contradictions(declared, facts)
    chosen = _chosen_layers(layers, target, model, known)

    for each in cache_roots.all():
        check_state(each)
    writer, manifest = _open_writer(cache_roots, db if db is not None else os.environ.get("CACHEKEEPER_DB"))
    writer.append(journal.OBSERVED, facts=facts.to_json(), host=builder_id())
    for change in mismatches:
        logger.warning(
            "cachekeeper: this process does not match its target %s: %s; its caches are keyed by "
            "what was observed, so the deploy check did not verify them",
            target.source if target else "", change,  # type: ignore[union-attr]
        )  # fmt: skip
        writer.append(journal.MISMATCH, fact=change.name, declared=f.thaw(change.old), observed=f.thaw(change.new))

    waiting = _Waiting(on_busy, wait_timeout, refresh)
    claims: list[_Claim] = []
    previous_env: dict[str, str | None] = {}
    try:
        try:
            waiting.refresh()
            for layer in chosen:
                root_of_layer = cache_roots.for_layer(layer.name)
                mechanism = _lease_mechanism(leases, root_of_layer, manifest, lease_ttl)
                claims.append(_claim(layer, keys[layer.name], root_of_layer, mechanism, waiting))
            _record_dependencies(claims)
            env = _point_env(claims, previous_env)
            activation = Activation(facts, keys, {c.layer.name: c.use for c in claims}, env, mismatches)
            yield activation
        except BaseException:
            _restore_env(previous_env)
            for claim in claims:
                claim.abandon()
            writer.close()
            raise
        boot_seconds = time.monotonic() - started
        for claim in claims:
            if activation._discarded:
                claim.abandon()
            else:
                claim.finish(writer, facts, boot_seconds)
        try:
            writer.close()
        except OSError as error:  # the journal stays open: sync reads it all the same
            logger.warning("cachekeeper: could not close the journal: %s", error)
        # Before any lease is released: a container that takes the lease next must already be
        # able to see the sidecar, or it would build the same key again.
        if commit is not None:
            _commit(commit)
    finally:
        for claim in claims:
            claim.release()


def declared_gpu_facts(target: Target | None) -> list[Fact]:
    """The GPU facts a target declares (type, count, arch; the driver if it names one)."""
    return [fact for fact in (target.declared_facts() if target else []) if _is_gpu_fact(fact.name)]


def _is_gpu_fact(name: str) -> bool:
    return name.startswith(("gpu.", "driver.")) or name == f.CUDA_DRIVER


def contradictions(declared: Iterable[Fact], observed: Facts) -> tuple[FactChange, ...]:
    """Declared facts that the running process contradicts: declared value → observed value."""
    changes = []
    for fact in declared:
        seen = observed.get(fact.name)
        if seen is not None and seen.value != fact.value:
            changes.append(FactChange(fact.name, fact.value, seen.value))
    return tuple(changes)


def _chosen_layers(
    names: Sequence[str] | None, target: Target | None, model: str | None, known: tuple[Layer, ...]
) -> list[Layer]:
    from .layers import layer_named

    if names is None:
        names = target.needs if target else ((WEIGHTS, COMPILE) if model else (COMPILE,))
    chosen = [layer_named(name, known) for name in names]
    return [layer for layer in chosen if not (layer.name == WEIGHTS and not model)]


@dataclass
class _Claim:
    """One layer's part in a boot, and what must happen to it on exit."""

    layer: Layer
    use: LayerUse
    root: Root
    lease: Lease | None = None
    started: float = field(default_factory=time.monotonic)
    depends_on: tuple[str, ...] = ()  # keys a snapshot is built from
    registration: uses.Registration | None = None

    def finish(self, writer: _Writer, facts: Facts, boot_seconds: float) -> None:
        """Publish what was built and journal what happened. A disk that fails now (full, gone
        read-only) costs the cache, not the boot: the server goes on, nothing is half published,
        and the next boot builds the key again."""
        try:
            self._finish(writer, facts, boot_seconds)
        except OSError as error:
            published = read_sidecar(self.root, self.layer.name, str(self.use.key)) is not None
            logger.warning(
                "cachekeeper: %s %s: %s%s", "could not record" if published else "did not publish",
                self.use.key, error, "" if published else "; the next boot builds it again",
            )  # fmt: skip

    def _finish(self, writer: _Writer, facts: Facts, boot_seconds: float) -> None:
        name, key = self.layer.name, str(self.use.key)
        model = str(facts.value(f.MODEL, f.NONE))
        event = {"layer": name, "key": key, "model": model, "seconds": boot_seconds}
        if self.use.status == HIT:
            writer.append(journal.HIT, **event)
        elif self.use.status == BUILD:
            if self.lease is not None and not self.lease.held():
                # Taken over while this process stalled: the directory is another builder's now.
                logger.warning("cachekeeper: lost the build lease of %s; not publishing it", key)
                writer.append(journal.MISS, **event)
                return
            artifact, contents = _artifact(self.use, f"{name}/{key}", self.use.path, facts, self.depends_on)
            writer.append(journal.PUBLISHING, **event)
            if publish(self.root, artifact, contents):
                writer.append(journal.PUBLISHED, **event, bytes=artifact.bytes)
        elif self.use.status == DOWNLOAD:
            self._publish_weights(writer, facts, event)
        else:
            writer.append(journal.MISS, **event)

    def _publish_weights(self, writer: _Writer, facts: Facts, event: dict[str, Any]) -> None:
        model, sha = str(facts.value(f.MODEL)), str(facts.value(f.MODEL_REVISION))
        relpath = f"{WEIGHTS}/{f.hf_repo_folder(model)}/snapshots/{sha}"
        snapshot = self.root.path / relpath
        if not snapshot.is_dir() or not any(snapshot.iterdir()):
            writer.append(journal.MISS, **event)  # the boot never downloaded them: nothing to record
            return
        artifact, contents = _artifact(self.use, relpath, snapshot, facts, within=self.root.path)
        writer.append(journal.PUBLISHING, **event)
        if publish(self.root, artifact, contents):
            writer.append(journal.PUBLISHED, **event, bytes=artifact.bytes)
        else:
            writer.append(journal.HIT, **event)

    def abandon(self) -> None:
        """Publish nothing; remove what this process half built while it still holds the lease."""
        if self.registration is not None:
            self.registration.release()
        if self.use.status == BUILD and (self.lease is None or self.lease.held()):
            remove_tree(self.root, f"{self.layer.name}/{self.use.key}")

    def release(self) -> None:
        if self.lease is not None:
            self.lease.release()


def _artifact(
    use: LayerUse, relpath: str, path: Path, facts: Facts, depends_on: tuple[str, ...] = (), *, within: Path | None = None
) -> tuple[Artifact, Contents]:
    """The record of what was built, with every file's checksum. A Hub snapshot's files are links
    into the repo's blobs: ``within`` is the root they may be followed into, never out of."""
    contents = scan_contents(path, follow_links_within=within)
    now = time.time()
    artifact = Artifact(
        key=str(use.key), layer=use.layer, model=str(facts.value(f.MODEL, f.NONE)), relpath=relpath,
        bytes=contents.bytes, files=contents.count, created_at=now, last_used_at=now, builder=builder_id(),
        facts=use.key.facts.values(), depends_on=depends_on, checksum=contents.checksum,
    )  # fmt: skip
    return artifact, contents


class _Waiting:
    """How a boot waits for another builder, and how it looks again at the shared roots."""

    def __init__(self, on_busy: str, timeout: float, refresh: Callable[[], object] | None) -> None:
        if on_busy not in ("wait", "cold"):
            raise UsageError(f"on_busy must be 'wait' or 'cold', not {on_busy!r}")
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


def _lease_mechanism(
    given: Leases | None, root: Root, manifest: Manifest | None, ttl: float | None
) -> Callable[[], Leases]:
    """The lease mechanism to build with, made once and only when a key is cold: a warm hit takes
    no lease, and does not even load the module."""

    @functools.cache
    def mechanism() -> Leases:
        if given is not None:
            return given
        from .leases import DEFAULT_TTL, leases_for

        return leases_for(root, manifest, DEFAULT_TTL if ttl is None else ttl)

    return mechanism


def _claim(layer: Layer, key: CacheKey, root: Root, leases: Callable[[], Leases], waiting: _Waiting) -> _Claim:
    """This boot's use of one layer. The use is registered before the sidecar is read: prune
    removes the sidecar before it looks for uses a last time, so either prune sees this use and
    keeps the artifact, or this boot sees no sidecar (see prune._remove_batch)."""
    registration = uses.register(root, layer.name, str(key))
    try:
        claim = _look(layer, key, root, leases, waiting)
    except BaseException:
        registration.release()
        raise
    if claim.use.status == PRIVATE:
        registration.release()  # nothing shared is used
    else:
        claim.registration = registration
    return claim


def _look(layer: Layer, key: CacheKey, root: Root, leases: Callable[[], Leases], waiting: _Waiting) -> _Claim:
    if layer.name == WEIGHTS:
        status = HIT if read_sidecar(root, WEIGHTS, str(key)) is not None else DOWNLOAD
        return _Claim(layer, LayerUse(WEIGHTS, key, status, root.layer_dir(WEIGHTS)), root)
    directory, relpath = root.artifact_dir(layer.name, str(key)), f"{layer.name}/{key}"
    while True:
        if read_sidecar(root, layer.name, str(key)) is not None:
            if _leads_out(root, relpath):
                return _private(layer, key, root)
            return _Claim(layer, LayerUse(layer.name, key, HIT, directory), root)
        lease = leases().acquire(layer.name, str(key))
        if lease is not None:
            try:
                # Another builder may have published between our look and our lease.
                if read_sidecar(root, layer.name, str(key)) is not None:
                    lease.release()
                    continue
                # Whatever is here was left by a build that died: never trusted, so start afresh.
                # A link in place of the directory goes as a link; one above it is refused.
                remove_tree(root, relpath)
                directory.mkdir(parents=True)
            except UnsafePath as error:
                lease.release()
                logger.warning("cachekeeper: not building %s: %s; booting cold instead", relpath, error)
                return _private(layer, key, root)
            except BaseException:
                lease.release()
                raise
            return _Claim(layer, LayerUse(layer.name, key, BUILD, directory), root, lease)
        if waiting.gives_up():
            return _private(layer, key, root)
        waiting.pause()


def _private(layer: Layer, key: CacheKey, root: Root) -> _Claim:
    private = Path(tempfile.mkdtemp(prefix=f"cachekeeper-{layer.name}-"))
    atexit.register(shutil.rmtree, private, ignore_errors=True)
    return _Claim(layer, LayerUse(layer.name, key, PRIVATE, private), root)


def _leads_out(root: Root, relpath: str) -> bool:
    """Whether the key's directory is, or is reached through, a symbolic link: a boot would read
    and write wherever it points, outside the root. Such an artifact is not used."""
    try:
        linked = root.inside(relpath).is_symlink()
    except UnsafePath as error:
        linked, reason = True, str(error)
    else:
        reason = f"{root.path / relpath} is a symbolic link"
    if linked:
        logger.warning("cachekeeper: not using %s: %s; booting cold instead", relpath, reason)
    return linked


def _commit(commit: Callable[[], object]) -> None:
    try:
        commit()
    except Exception as error:  # what was published is on disk; the platform commits it later
        logger.warning("cachekeeper: committing the cache after publishing failed: %s", error)


class _Writer(Protocol):
    def append(self, kind: str, **fields: Any) -> None: ...

    def close(self) -> None: ...


def _open_writer(roots: Roots, url: str | None) -> tuple[_Writer, Manifest | None]:
    """A journal of this process's own; with a server database, the manifest itself.

    A SQLite manifest is never written from here: it may sit on a Volume other containers write.
    """
    if not url or url.startswith("sqlite"):
        return journal.Journal(roots.main), None
    from .manifest import Manifest

    try:
        manifest = Manifest.open(url)
    except CachekeeperError as error:
        logger.warning("cachekeeper: the manifest database is not usable, journaling instead: %s", error)
        return journal.Journal(roots.main), None
    return _ManifestWriter(manifest, roots), manifest


class _ManifestWriter:
    """Records straight into a server manifest; if it fails mid-boot, into a journal from then on."""

    def __init__(self, manifest: Manifest, roots: Roots) -> None:
        self.manifest = manifest
        self.roots = roots
        self.fallback: journal.Journal | None = None

    def append(self, kind: str, **fields: Any) -> None:
        if self.fallback is None:
            if kind == journal.PUBLISHING:
                return  # the intent only helps a later sync of a journal
            record = {"uid": uuid.uuid4().hex, "kind": kind, "at": time.time(), **fields}
            artifacts = []
            if kind == journal.PUBLISHED:
                layer, key = str(fields["layer"]), str(fields["key"])
                artifact = read_sidecar(self.roots.for_layer(layer), layer, key)
                artifacts = [artifact] if artifact is not None else []
            try:
                self.manifest.fold([record], artifacts, {})
                return
            except CachekeeperError as error:
                logger.warning("cachekeeper: writing the manifest failed, journaling instead: %s", error)
                self.fallback = journal.Journal(self.roots.main)
        self.fallback.append(kind, **fields)

    def close(self) -> None:
        if self.fallback is not None:
            self.fallback.close()


def _point_env(claims: list[_Claim], previous: dict[str, str | None]) -> dict[str, str]:
    """Set each layer's variables. They stay set after a clean exit, so that code compiled lazily
    later in the same process (a new batch size) lands in the same artifact."""
    env: dict[str, str] = {}
    for claim in claims:
        for variable, subdirectory in claim.layer.env:
            path = claim.use.path / subdirectory if subdirectory else claim.use.path
            path.mkdir(parents=True, exist_ok=True)
            env[variable] = str(path)
        if claim.layer.name == COMPILE and not _has_torch_bytecode():
            # Without bytecode for torch (PYTHONDONTWRITEBYTECODE, a read-only or uv-built image),
            # every boot spends seconds compiling torch._dynamo and torch._inductor from source.
            # Keep the bytecode with the artifact, keyed by Python and torch; the image stays clean.
            env["PYTHONPYCACHEPREFIX"] = str(claim.use.path / "python")
            env["PYTHONDONTWRITEBYTECODE"] = ""
            sys.pycache_prefix, sys.dont_write_bytecode = env["PYTHONPYCACHEPREFIX"], False
    for variable, value in env.items():
        previous.setdefault(variable, os.environ.get(variable))
        os.environ[variable] = value
    return env


def _has_torch_bytecode() -> bool:
    """Whether Python finds compiled bytecode for torch's compiler, or there is no torch at all."""
    spec = importlib.util.find_spec("torch")
    if spec is None or spec.origin is None:
        return True
    source = Path(spec.origin).parent / "_dynamo" / "__init__.py"
    try:
        return Path(importlib.util.cache_from_source(str(source))).exists()
    except (NotImplementedError, ValueError):
        return True


def _restore_env(previous: Mapping[str, str | None]) -> None:
    if "PYTHONPYCACHEPREFIX" in previous:
        sys.pycache_prefix = previous["PYTHONPYCACHEPREFIX"]
        sys.dont_write_bytecode = bool(previous["PYTHONDONTWRITEBYTECODE"])
    for variable, value in previous.items():
        if value is None:
            os.environ.pop(variable, None)
        else:
            os.environ[variable] = value


def _record_dependencies(claims: list[_Claim]) -> None:
    """For housekeeping: a snapshot is built from the other layers' artifacts (kept as long as it
    lives)."""
    for claim in claims:
        if claim.layer.name == SNAPSHOT:
            claim.depends_on = tuple(str(other.use.key) for other in claims if other is not claim)
