"""cachekeeper on Modal: Volumes reloaded before a lookup and committed after a publish, build
leases in a ``modal.Dict``, and memory snapshots keyed by cachekeeper.

::

    import modal
    import cachekeeper.modal as ckm

    weights = modal.Volume.from_name("huggingface-cache", create_if_missing=True)
    compiled = modal.Volume.from_name("vllm-cache", create_if_missing=True)
    leases = modal.Dict.from_name("cachekeeper-leases", create_if_missing=True)

    @app.cls(gpu="H100", volumes={"/vol/weights": weights, "/vol/compile": compiled})
    class Server:
        @modal.enter()
        def boot(self):
            with ckm.activate("/vol/compile", target="cachekeeper.toml",
                              volumes=[weights, compiled], leases=leases) as ck:
                self.llm = LLM(...)

This module is the seam between cachekeeper and Modal's servers: it uses only ``reload()`` and
``commit()`` of a Volume and ``get()`` / ``put(..., skip_if_exists=True)`` of a Dict, which real
``modal.Volume`` and ``modal.Dict`` objects provide as they are. It never imports ``modal``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from . import facts as f
from .deploy import resolved_revision, target_facts
from .errors import SnapshotMismatch
from .facts import Fact, Facts, Source
from .fingerprint import observe
from .gpus import Landing
from .keys import FactChange, derive_key
from .layers import SNAPSHOT, layer_named
from .leases import DEFAULT_TTL, DictStore, Leases, ModalDictLeases
from .runtime import Activation
from .runtime import activate as _activate
from .target import Target, load_target

logger = logging.getLogger("cachekeeper")

SNAPSHOT_KEY_ENV = "CACHEKEEPER_SNAPSHOT_KEY"
SNAPSHOT_FACTS_ENV = "CACHEKEEPER_SNAPSHOT_FACTS"

RELOAD_ATTEMPTS = 4
_FIRST_RELOAD_PAUSE = 0.25


class VolumeLike(Protocol):
    """What cachekeeper needs of a ``modal.Volume``."""

    def reload(self) -> None: ...

    def commit(self) -> None: ...


def reload(volume: VolumeLike, *, attempts: int = RELOAD_ATTEMPTS) -> bool:
    """See other containers' commits. False when the Volume could not be reloaded.

    ``reload()`` fails while this container has files open on the Volume (a model being read,
    a log being written). That is retried a few times with growing pauses, then the boot goes on
    with the view it has, and says so: it may find a key cold that another container published
    since, and build it again in place of waiting for it, which costs time and is never wrong.
    """
    pause = _FIRST_RELOAD_PAUSE
    for attempt in range(1, attempts + 1):
        try:
            volume.reload()
            return True
        except RuntimeError as error:  # "there are open files preventing the operation"
            problem: Exception = error
            if attempt < attempts:
                time.sleep(pause)
                pause *= 2
        except Exception as error:  # the platform itself: no use retrying at boot
            problem = error
            break
    logger.warning(
        "cachekeeper: could not reload a Volume (%s); going on with this container's view of it, "
        "which may miss what other containers published since it started",
        problem,
    )
    return False


def commit(volume: VolumeLike) -> None:
    volume.commit()


@contextmanager
def activate(
    root: str | os.PathLike[str] | None = None,
    *,
    volumes: Sequence[VolumeLike] = (),
    leases: DictStore | Leases | None = None,
    snap: bool = False,
    lease_ttl: float = DEFAULT_TTL,
    **options: Any,
) -> Iterator[Activation]:
    """``cachekeeper.activate`` for a Modal container.

    ``volumes`` are the Volumes the roots live on: reloaded before every look, committed after
    publishing. ``leases`` is a ``modal.Dict`` (or any lease mechanism): without one, containers
    cannot see each other's builds and several may build the same key. ``snap=True`` inside an
    ``@modal.enter(snap=True)`` hook of a CPU-only memory snapshot: the GPU facts come from the
    target, and neither NVML nor CUDA is touched. Other options go to ``cachekeeper.activate``.
    """
    if leases is not None and not isinstance(leases, Leases):
        leases = ModalDictLeases(leases, lease_ttl)
    elif leases is None and volumes:
        logger.warning(
            "cachekeeper: no lease Dict given: containers booting at once on a cold key will each "
            "build it; pass leases=modal.Dict.from_name(...)"
        )

    def refresh() -> None:
        for volume in volumes:
            reload(volume)

    def commit_all() -> None:
        for volume in volumes:
            commit(volume)

    with _activate(
        root,
        leases=leases,
        lease_ttl=lease_ttl,
        probe_gpu=not snap,
        refresh=refresh if volumes else None,
        commit=commit_all if volumes else None,
        **options,
    ) as activation:
        yield activation


# --- memory snapshots -----------------------------------------------------------------------


def snapshot_facts(
    target: Target | str | os.PathLike[str],
    *,
    hf_cache: Path | None = None,
    environ: Mapping[str, str] | None = None,
    gpu: str | None = None,
) -> Facts:
    """The facts a deploy's memory snapshot is keyed by on one landing (``gpu``, such as
    ``"H200"``; default: the target's first), from the target alone: no GPU needed.

    What the target leaves out (usually the exact driver) is keyed as unknown; Modal itself
    takes new snapshots when its hosts' runtime changes. A revision name is resolved in
    ``hf_cache`` (default: $HF_HUB_CACHE), else on the Hub.
    """
    target = _target(target)
    return _landing_facts(target, target.landing(gpu), _hf_cache(hf_cache, environ), environ)


def snapshot_tag(
    target: Target | str | os.PathLike[str], *, hf_cache: Path | None = None, gpu: str | None = None
) -> str:
    """The snapshot layer's key for a deploy on one landing (default: the first). Put it in the
    image's environment (see ``snapshot_env``) so that a change of key is a change of config,
    which makes Modal take a new memory snapshot; Modal offers no other way to drop one."""
    target = _target(target)
    return str(derive_key(layer_named(SNAPSHOT, target.layers), snapshot_facts(target, hf_cache=hf_cache, gpu=gpu)))


def snapshot_tags(target: Target | str | os.PathLike[str], *, hf_cache: Path | None = None) -> dict[str, str]:
    """The snapshot tag of every landing, by its label (``{"H100": ..., "H200": ...}``).

    An image's environment holds one tag, and ``snapshot_env`` puts the first landing's there.
    That is enough: the landings' tags differ only in their GPU facts, which the target fixes, so
    whatever changes one tag changes them all; and Modal keeps a snapshot per GPU type.
    """
    target = _target(target)
    layer = layer_named(SNAPSHOT, target.layers)
    hf_cache = _hf_cache(hf_cache, None)
    revision = resolved_revision(target, hf_cache)
    return {
        landing.label: str(derive_key(layer, _landing_facts(target, landing, hf_cache, None, revision)))
        for landing in target.landings
    }


def snapshot_env(
    target: Target | str | os.PathLike[str], *, hf_cache: Path | None = None, gpu: str | None = None
) -> dict[str, str]:
    """``image.env(snapshot_env(target))``: the snapshot's key on one landing (default: the
    first), and the facts it was made of for ``verify_restore`` to compare against after a restore.

    Without ``gpu``, the facts are those every landing shares: a container restored on the H200 of
    an ``"H100"`` deploy is where it should be, and ``verify_restore`` must not say otherwise.
    """
    target = _target(target)
    hf_cache = _hf_cache(hf_cache, None)
    layer = layer_named(SNAPSHOT, target.layers)
    revision = resolved_revision(target, hf_cache)
    chosen = _landing_facts(target, target.landing(gpu), hf_cache, None, revision)
    known = {fact.name: f.thaw(fact.value) for fact in chosen if fact.source is not Source.UNKNOWN}
    if gpu is None:
        for landing in target.landings[1:]:
            other = _landing_facts(target, landing, hf_cache, None, revision)
            known = {name: value for name, value in known.items() if f.thaw(other.value(name, f.UNKNOWN)) == value}
    return {
        SNAPSHOT_KEY_ENV: str(derive_key(layer, chosen)),
        SNAPSHOT_FACTS_ENV: json.dumps(known, sort_keys=True, separators=(",", ":")),
    }


def _target(target: Target | str | os.PathLike[str]) -> Target:
    return target if isinstance(target, Target) else load_target(Path(target))


def _hf_cache(hf_cache: Path | None, environ: Mapping[str, str] | None) -> Path | None:
    environ = os.environ if environ is None else environ
    if hf_cache is None and environ.get("HF_HUB_CACHE"):
        return Path(environ["HF_HUB_CACHE"])
    return hf_cache


def _landing_facts(
    target: Target,
    landing: Landing,
    hf_cache: Path | None,
    environ: Mapping[str, str] | None,
    revision: Fact | None = None,
) -> Facts:
    facts = target_facts(target, None, hf_cache, environ, landing=landing, revision=revision)
    return layer_named(SNAPSHOT, target.layers).keyed(facts)


# Facts a running process can observe about itself; the model and engine are what it was told.
_OBSERVABLE = ("gpu.", "driver.", "cuda.", f.PYTHON, f.TORCH, f.TRITON, f.VLLM, f.FLASHINFER, f.ENV_PREFIX)


def verify_restore(
    expected: Facts | Mapping[str, Any] | None = None,
    *,
    strict: bool = False,
    environ: Mapping[str, str] | None = None,
) -> tuple[FactChange, ...]:
    """After a restore (``@modal.enter(snap=False)``): does this process still match the facts its
    snapshot was keyed by? Each difference is logged as an error; ``strict`` raises instead.

    ``expected`` defaults to the facts ``snapshot_env`` put in the environment. With a GPU
    snapshot, pass ``ck.facts`` saved in the ``snap=True`` hook: what the process really was.
    """
    environ = os.environ if environ is None else environ
    if expected is None:
        if SNAPSHOT_FACTS_ENV not in environ:
            raise SnapshotMismatch(
                f"${SNAPSHOT_FACTS_ENV} is not set: put snapshot_env(target) in the image's environment"
            )
        expected = json.loads(environ[SNAPSHOT_FACTS_ENV])
    values = expected.values() if isinstance(expected, Facts) else dict(expected)
    observed = observe(environ=environ)
    changes = tuple(
        FactChange(name, f.freeze(value), observed.value(name, f.NONE))
        for name, value in sorted(values.items())
        if name.startswith(_OBSERVABLE) and value != f.UNKNOWN and observed.value(name, f.NONE) != f.freeze(value)
    )
    if changes:
        message = "this process does not match the facts its memory snapshot was keyed by: " + "; ".join(
            map(str, changes)
        )
        if strict:
            raise SnapshotMismatch(message)
        logger.error("cachekeeper: %s. Redeploy so that Modal takes a new snapshot.", message)
    return changes


__all__ = [
    "SNAPSHOT_FACTS_ENV",
    "SNAPSHOT_KEY_ENV",
    "VolumeLike",
    "activate",
    "commit",
    "reload",
    "snapshot_env",
    "snapshot_facts",
    "snapshot_tag",
    "snapshot_tags",
    "verify_restore",
]
