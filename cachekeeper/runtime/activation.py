"""``activate()``: the cache layers of one boot, inside ``@modal.enter`` or any Python process.

::

    with cachekeeper.activate(root="/cache", model="Qwen/Qwen2.5-0.5B-Instruct",
                              revision="main", engine={"max_model_len": 4096}) as ck:
        llm = vllm.LLM(**ck.engine_args)   # the model, its resolved sha, the engine arguments keyed

On entry: fingerprint this process (NVML and package metadata, no torch or vllm import), derive
each layer's key, point the cache variables at the key's directories, and say per layer whether
it was a hit. On a clean exit: publish what was built (sidecar last) and record what happened.
On an exception: publish nothing, and remove what was half built.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .. import facts as f
from ..deploy import contradictions, declared_gpu_facts, is_gpu_fact, landing_of
from ..engine_args import engine_args
from ..facts import Facts
from ..fingerprint import observe
from ..keys import CacheKey, FactChange, derive_keys
from ..layers import COMPILE, DEFAULT_LAYERS, WEIGHTS, Layer, layer_named
from ..records import Kind, Record
from ..store import Roots, builder_id, check_state, default_root
from ..strikes import DEFAULT_STRIKES, DEFAULT_WINDOW
from .claims import Claim, LayerUse, Waiting, lease_mechanism, record_dependencies
from .environment import point_env, restore_env
from .guard import Guard, describe, read_only_roots, unavailable
from .recording import Writer, open_writer
from .watch import StrikePolicy, Watch

if TYPE_CHECKING:
    from ..leases import Leases
    from ..manifest import Manifest
    from ..target import Target

logger = logging.getLogger("cachekeeper")


class Activation:
    """What ``activate()`` gives the caller: facts, keys, each active layer's use, and the engine
    arguments the keys were derived from (``LLM(**ck.engine_args)``: model, resolved revision and
    the engine table). A plain class, not a dataclass: a boot defines it (see values.py)."""

    __slots__ = ("_discarded", "_failure", "_watch", "engine_args", "env", "facts", "keys", "layers", "mismatches")

    def __init__(
        self,
        facts: Facts,
        keys: dict[str, CacheKey],
        layers: dict[str, LayerUse],
        env: dict[str, str],
        mismatches: tuple[FactChange, ...],
        engine_args: Mapping[str, Any],
        watch: Watch | None = None,
    ) -> None:
        self.facts = facts
        self.keys = keys
        self.layers = layers
        self.env = env
        self.mismatches = mismatches
        self.engine_args = engine_args
        self._watch = watch
        self._discarded = False
        self._failure: str | None = None

    def __repr__(self) -> str:
        return f"Activation(keys={self.keys!r}, hits={self.hits!r}, env={self.env!r})"

    @property
    def hits(self) -> dict[str, bool]:
        return {name: use.hit for name, use in self.layers.items()}

    def hit(self, layer: str) -> bool:
        return self.layers[layer].hit

    def to_json(self) -> dict[str, Any]:
        return {
            "layers": [
                {"layer": use.layer, "key": str(use.key), "status": use.status, "path": str(use.path)}
                for use in self.layers.values()
            ],
            "mismatches": [change.to_json() for change in self.mismatches],
        }

    def discard(self, *, failure: str | None = None) -> None:
        """Publish nothing on exit. With ``failure`` (how the boot failed, for people), the boot
        counts as failed, as if the block had raised: a strike against every artifact it hit
        (``cachekeeper run`` when its command exits non-zero)."""
        self._discarded = True
        self._failure = failure

    def canary(self, value: Any) -> str:
        """Record a digest of ``value``, a result that sound caches compute the same way every time
        (the greedy completion of a fixed prompt, its logprobs rounded as far as you trust them);
        its hex digest. The boot that builds an artifact stores it; a boot that hits compares, and
        a difference is an error line naming both digests and a strike against the artifact."""
        if self._watch is None:  # booted cold privately: nothing to compare with or store
            from ..canary import digest

            return digest(value)
        return self._watch.canary(value)


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
    strikes: int | None = None,
    strike_window: float = DEFAULT_WINDOW,
    read_only_hits: str = "copy",
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

    ``strikes``, ``strike_window`` and ``read_only_hits`` are those of ``cachekeeper.activate``
    (runtime/failopen.py), which calls this and makes every failure of it a private cold boot.
    That wrapper has checked every argument (and read the target) already: this does not again.
    """
    started = time.monotonic()
    target = _load(target)
    per_layer = {**(target.roots if target else {}), **{k: Path(v) for k, v in (roots or {}).items()}}
    cache_roots = Roots.at(Path(root) if root is not None else default_root(), per_layer)
    model = model if model is not None else (target.model if target else None)
    revision = revision if revision is not None else (target.revision if target else None)
    engine = engine if engine is not None else (target.engine if target else {})
    image = image if image is not None else (target.image if target else None)
    facts = observe(
        model=model,
        revision=revision,
        engine=engine,
        image=image,
        hf_cache=cache_roots.hf_cache(),
        gpu=None if probe_gpu else declared_gpu_facts(target),
    )
    known = target.layers if target else DEFAULT_LAYERS
    keys = derive_keys(facts, known)
    declared = target.declared_facts(landing_of(target, facts)) if target else []
    if not probe_gpu:  # the GPU facts were copied from the target: comparing them proves nothing
        declared = [fact for fact in declared if not is_gpu_fact(fact.name)]
    mismatches = contradictions(declared, facts)
    chosen = _chosen_layers(layers, target, model, known)
    waiting = Waiting(on_busy, wait_timeout, refresh)

    url = db if db is not None else os.environ.get("CACHEKEEPER_DB")
    read_only = read_only_roots(cache_roots)
    for each_root in cache_roots.all():
        if each_root.path not in read_only:  # a root cachekeeper cannot write is only read
            each_root.initialise()
        check_state(each_root)
    writer, manifest, unusable = open_writer(cache_roots, url, read_only=cache_roots.main.path in read_only)
    # A server manifest holds the build leases: without it no build can be known to be alone.
    lost = None
    if unusable is not None:
        instead = "recording nothing" if cache_roots.main.path in read_only else "journaling instead"
        if leases is None:
            lost = "the manifest database, which holds the build leases, is not usable"
            instead += ", and cold keys boot cold privately"
        logger.warning("cachekeeper: the manifest database is not usable (%s): %s", unusable, instead)
    writer.append(Record.new(Kind.OBSERVED, facts=facts, host=builder_id()))
    for change in mismatches:
        logger.warning(
            "cachekeeper: this process does not match its target %s: %s; its caches are keyed by "
            "what was observed, so the deploy check did not verify them",
            target.source if target else "",
            change,
        )
        writer.append(Record.new(Kind.MISMATCH, fact=change.name, declared=change.old, observed=change.new))

    policy = StrikePolicy(_strikes(strikes, target), strike_window)
    guard = _guard(policy, writer, manifest, facts, read_only, read_only_hits)
    if lost is not None:
        guard.announced(lost)  # said above, once

    claims: list[Claim] = []
    previous_env: dict[str, str | None] = {}
    entered = False
    try:
        try:
            waiting.refresh()
            for layer in chosen:
                root_of_layer = cache_roots.for_layer(layer.name)
                mechanism = unavailable(lost) if lost else lease_mechanism(leases, root_of_layer, manifest, lease_ttl)
                claims.append(guard.claim(layer, keys[layer.name], root_of_layer, mechanism, waiting))
            record_dependencies(claims)
            env = point_env(claims, previous_env)
            keyed_revision = str(facts.value(f.MODEL_REVISION)) if model else None
            arguments = engine_args(model, keyed_revision, engine)
            activation = Activation(
                facts, keys, {c.layer.name: c.use for c in claims}, env, mismatches, arguments, guard.watch
            )
            entered = True
            yield activation
        except BaseException as error:
            # The user's failure strikes what this boot hit; one of cachekeeper's own only settles.
            guard.watch.failed(_failure(error) if entered else None)
            restore_env(previous_env)
            for each in claims:
                each.abandon()
            writer.close()
            raise
        boot_seconds = time.monotonic() - started
        if activation._discarded:  # before any use is dropped: a dead boot's attempt outlives its use
            guard.watch.failed(activation._failure)
        else:  # before anything is published: a build's canary goes first
            guard.watch.succeeded(claims)
        for each in claims:
            if activation._discarded:
                each.abandon()
            else:
                each.finish(writer, facts, boot_seconds)
        try:
            writer.close()
        except OSError as error:  # the journal stays open: sync reads it all the same
            logger.warning("cachekeeper: could not close the journal: %s", error)
        # Before any lease is released: a container that takes the lease next must already be
        # able to see the sidecar, or it would build the same key again.
        if commit is not None and len(read_only) < len(cache_roots.all()):
            _commit(commit)
    finally:
        for each in claims:
            each.release()


def _strikes(given: int | None, target: Target | None) -> int:
    if given is not None:
        return given
    if target is not None and target.strikes is not None:
        return target.strikes
    return DEFAULT_STRIKES


def _guard(
    policy: StrikePolicy,
    writer: Writer,
    manifest: Manifest | None,
    facts: Facts,
    read_only: frozenset[Path],
    read_only_hits: str,
) -> Guard:
    served = None
    if read_only and manifest is not None:
        from .served import ServedUses

        served = ServedUses(manifest)
    watch = Watch(policy, writer, manifest, str(facts.value(f.MODEL, f.NONE)), read_only)
    return Guard(watch, read_only, read_only_hits, served)


def _failure(error: BaseException) -> str | None:
    """How a block failed, for a strike's reason; None for an interruption (not the cache's doing)."""
    if not isinstance(error, Exception):
        return None
    return f"the block raised {describe(error)}"


def _load(target: str | os.PathLike[str] | Target | None) -> Target | None:
    if target is None or not isinstance(target, (str, os.PathLike)):
        return target
    from ..target import load_target  # a warm boot without a target file never parses TOML

    return load_target(Path(target))


def _chosen_layers(
    names: Sequence[str] | None, target: Target | None, model: str | None, known: tuple[Layer, ...]
) -> list[Layer]:
    if names is None:
        names = target.needs if target else ((WEIGHTS, COMPILE) if model else (COMPILE,))
    chosen = [layer_named(name, known) for name in names]
    return [layer for layer in chosen if not (layer.name == WEIGHTS and not model)]


def _commit(commit: Callable[[], object]) -> None:
    try:
        commit()
    except Exception as error:  # what was published is on disk; the platform commits it later
        logger.warning("cachekeeper: committing the cache after publishing failed: %s", error)
