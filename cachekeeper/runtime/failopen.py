"""``cachekeeper.activate``: a boot that the cache can never make fail.

Whatever fails in cachekeeper's own machinery inside ``activate()`` (a root it cannot write, a full
disk, damaged or unreadable state, a root it must refuse, a link in its state, a manifest database
or lease backend that cannot be reached, NVML failing, a bug of cachekeeper's), the process boots
cold in a private directory with one warning line naming the cause, and runs normally: the cache
variables point at a private temporary directory, removed at exit. A failure while finishing (a
publish, a journal, a commit) is one warning too: nothing half built is published.

What still raises is the caller's:

- a ``UsageError`` raised while the arguments are checked, before anything is observed or
  touched: an unknown layer, ``on_busy`` or ``read_only_hits``; ``strikes`` below 0 or a
  ``strike_window`` that is not positive; a target file that cannot be read or is invalid; a
  model that is no Hugging Face repo id; engine arguments that cannot be keyed (NaN, a value
  given twice); a database URL that names no database (a database that cannot be reached is
  cachekeeper's: it fails open);
- whatever the code inside the ``with`` block raises: the very same exception, after cachekeeper
  published nothing and counted a strike against each artifact the boot hit (strikes.py);
- ``KeyboardInterrupt``, ``SystemExit`` and other exceptions that are not ``Exception``s,
  wherever they come from.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .. import facts as f
from ..deploy import declared_gpu_facts
from ..engine_args import engine_args, refuse_reserved
from ..errors import CachekeeperError, FingerprintError, RevisionError, UsageError
from ..facts import Fact, Facts, Source
from ..fingerprint import observe
from ..keys import derive_keys
from ..layers import DEFAULT_LAYERS
from ..store import Root, Roots, default_root
from ..strikes import DEFAULT_WINDOW
from .activation import Activation, _chosen_layers, _load
from .activation import activate as _activate
from .claims import PRIVATE, Claim, LayerUse, private_claim
from .environment import point_env, restore_env
from .guard import describe

if TYPE_CHECKING:
    from ..leases import Leases
    from ..target import Target

logger = logging.getLogger("cachekeeper")

_GPU_FACTS = (f.GPU_TYPE, f.GPU_NAME, f.GPU_ARCH, f.GPU_MEMORY, f.GPU_COUNT, f.DRIVER, f.DRIVER_BRANCH, f.CUDA_DRIVER)


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
    """Use the cache for one boot; nothing the cache does can make it fail (see the module's
    docstring for what still raises). Arguments override what ``target`` declares.

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

    An artifact that ``strikes`` boots (default: the target's ``strikes``, else 2; 0: never) hit
    and then failed on within ``strike_window`` seconds (a day) is quarantined and built afresh.
    On a root this process cannot write (``Volume.read_only()``), hits are served read-only and
    misses boot cold privately; ``read_only_hits`` says how a hit whose variables point compilers
    at it is served: ``"copy"`` (a private copy: compilers may write) or ``"direct"`` (the
    artifact itself, for artifacts known to be complete; see runtime/readonly.py).
    """
    loaded = _checked(target, model, engine, layers, on_busy, strikes, strike_window, read_only_hits, db)
    inner: AbstractContextManager[Activation] | None = _activate(
        root,
        target=loaded,
        roots=roots,
        model=model,
        revision=revision,
        engine=engine,
        image=image,
        layers=layers,
        on_busy=on_busy,
        wait_timeout=wait_timeout,
        lease_ttl=lease_ttl,
        leases=leases,
        db=db,
        probe_gpu=probe_gpu,
        refresh=refresh,
        commit=commit,
        strikes=strikes,
        strike_window=strike_window,
        read_only_hits=read_only_hits,
    )
    previous_env: dict[str, str | None] = {}
    try:
        assert inner is not None
        activation = inner.__enter__()
    except Exception as error:  # cachekeeper's own machinery: the boot goes on without the cache
        inner = None
        activation = _cold(error, root, loaded, model, revision, engine, image, layers, probe_gpu, previous_env)
    try:
        yield activation
    except BaseException as raised:
        if inner is not None:
            _finish(inner, raised)
        else:
            restore_env(previous_env)
        raise
    if inner is not None:
        _finish(inner, None)


def _checked(
    target: str | os.PathLike[str] | Target | None,
    model: str | None,
    engine: Mapping[str, Any] | None,
    layers: Sequence[str] | None,
    on_busy: str,
    strikes: int | None,
    strike_window: float,
    read_only_hits: str,
    db: str | None,
) -> Target | None:
    """The caller's arguments, checked before anything is observed or touched; the target, read.
    Every problem is a UsageError: the caller's to fix, not the cache's to survive."""
    if on_busy not in ("wait", "cold"):
        raise UsageError(f"on_busy must be 'wait' or 'cold', not {on_busy!r}")
    if read_only_hits not in ("copy", "direct"):
        raise UsageError(f"read_only_hits must be 'copy' or 'direct', not {read_only_hits!r}")
    if strikes is not None and (isinstance(strikes, bool) or not isinstance(strikes, int) or strikes < 0):
        raise UsageError(f"strikes must be a whole number from 0 (never quarantine) up, not {strikes!r}")
    if isinstance(strike_window, bool) or not isinstance(strike_window, int | float) or not strike_window > 0:
        raise UsageError(f"strike_window must be a positive number of seconds, not {strike_window!r}")
    if math.isinf(strike_window):
        raise UsageError("strike_window must be a finite number of seconds")
    loaded = _load(target)
    model = model if model is not None else (loaded.model if loaded else None)
    if model and not (isinstance(model, str) and f.is_repo_id(model)):
        raise UsageError(f"model {model!r} is not a Hugging Face repo id such as org/name")
    engine = engine if engine is not None else (loaded.engine if loaded else {})
    refuse_reserved(engine, "activate(engine=...)")
    f.engine_facts(engine)
    _chosen_layers(layers, loaded, model, loaded.layers if loaded else DEFAULT_LAYERS)
    url = db if db is not None else os.environ.get("CACHEKEEPER_DB")
    if url:
        from ..manifest import DatabaseUrl

        try:
            DatabaseUrl.parse(url)
        except CachekeeperError as error:
            raise UsageError(str(error)) from None
    return loaded


def _finish(inner: AbstractContextManager[Activation], raised: BaseException | None) -> None:
    """End the inner boot: publish and record after a clean block, abandon after ``raised``. What
    fails there is one warning; ``raised`` itself goes on as it was."""
    try:
        if raised is None:
            inner.__exit__(None, None, None)
        else:
            inner.__exit__(type(raised), raised, raised.__traceback__)
    except BaseException as error:
        if error is raised:
            return
        if not isinstance(error, Exception):
            raise
        logger.warning(
            "cachekeeper: finishing this boot's use of the cache failed: %s; nothing it half built is published",
            describe(error),
        )


def _cold(
    cause: BaseException,
    root: str | os.PathLike[str] | None,
    target: Target | None,
    model: str | None,
    revision: str | None,
    engine: Mapping[str, Any] | None,
    image: str | None,
    layers: Sequence[str] | None,
    probe_gpu: bool,
    previous_env: dict[str, str | None],
) -> Activation:
    """The boot without the cache: every layer in a private directory of its own."""
    where = Path(root) if root is not None else _nowhere()
    logger.warning(
        "cachekeeper: cannot use the cache at %s: %s; booting cold in a private directory "
        "(the cache is neither used nor written)",
        where,
        describe(cause),
    )
    model = model if model is not None else (target.model if target else None)
    revision = revision if revision is not None else (target.revision if target else None)
    engine = engine if engine is not None else (target.engine if target else {})
    image = image if image is not None else (target.image if target else None)
    nowhere = Root(where)  # never written
    gpu = None if probe_gpu else declared_gpu_facts(target)
    facts = _facts(cause, model, revision, engine, image, gpu, _hf_cache(nowhere.path, target))
    known = target.layers if target else DEFAULT_LAYERS
    keys = derive_keys(facts, known)
    chosen = _chosen_layers(layers, target, model, known)
    try:
        claims = [private_claim(layer, keys[layer.name], nowhere) for layer in chosen]
        env = point_env(claims, previous_env)
    except Exception as error:  # not even a private directory: the tools keep their own defaults
        restore_env(previous_env)
        logger.warning("cachekeeper: no private directory either (%s): the cache variables are left as they are", error)
        here = Path(tempfile.gettempdir())
        claims = [Claim(layer, LayerUse(layer.name, keys[layer.name], PRIVATE, here), nowhere) for layer in chosen]
        env = {}
    resolved = facts.value(f.MODEL_REVISION) if model else None
    keyed_revision = str(resolved) if resolved not in (None, f.NONE, f.UNKNOWN) else revision
    arguments = engine_args(model, keyed_revision, engine)  # the server starts as a warm boot would
    return Activation(facts, keys, {claim.layer.name: claim.use for claim in claims}, env, (), arguments)


def _nowhere() -> Path:
    try:
        return default_root()
    except Exception:
        return Path(tempfile.gettempdir())


def _facts(
    cause: BaseException,
    model: str | None,
    revision: str | None,
    engine: Mapping[str, Any],
    image: str | None,
    gpu: list[Fact] | None,
    hf_cache: Path | None,
) -> Facts:
    """As much of the fingerprint as can be had without what failed: NVML failing leaves the GPU
    facts unknown, a revision that could not be resolved stays the name it was given."""
    unknown_gpu = isinstance(cause, FingerprintError)
    unresolved = isinstance(cause, RevisionError)
    if gpu is None and unknown_gpu:
        gpu = _unknown_gpu()
    if not unresolved:
        try:
            return observe(model=model, revision=revision, engine=engine, image=image, hf_cache=hf_cache, gpu=gpu)
        except Exception:
            gpu = gpu if gpu is not None else _unknown_gpu()
    declared = [
        Fact(f.MODEL, model or f.NONE, Source.DECLARED),
        Fact(f.MODEL_REVISION, revision or f.NONE, Source.DECLARED),
    ]
    try:
        observed = observe(engine=engine, image=image, gpu=gpu)
    except Exception:
        return Facts(tuple(declared))
    return Facts(tuple(fact for fact in observed if fact.name not in (f.MODEL, f.MODEL_REVISION)) + tuple(declared))


def _unknown_gpu() -> list[Fact]:
    return [Fact(name, f.UNKNOWN, Source.UNKNOWN) for name in _GPU_FACTS]


def _hf_cache(root: Path, target: Target | None) -> Path | None:
    try:
        return Roots.at(root, target.roots if target else None).hf_cache()
    except Exception:
        return None
