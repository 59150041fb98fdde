"""What a prune is asked to do: its policies and scope, validated before anything is touched."""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import UsageError
from ..scope import EVERYTHING, Scope
from ..target import Target
from ..values import Value


class PrunePolicy(Value):
    """``older_than`` (seconds unused), ``stale`` (no target derives the key), ``keep_last`` (not
    among the N most recently used of its model and layer; also a floor for ``max_size``),
    ``max_size`` (bytes the artifacts in scope must fit), ``max_files`` (files they must fit; a
    Volume limits its files), within ``scope``; ``targets`` are the deploys still running."""

    older_than: float | None = None
    stale: bool = False
    keep_last: int | None = None
    max_size: int | None = None
    scope: Scope = EVERYTHING
    targets: tuple[Target, ...] = ()
    max_files: int | None = None

    @classmethod
    def of(
        cls,
        *,
        older_than: float | None = None,
        stale: bool = False,
        keep_last: int | None = None,
        max_size: int | None = None,
        max_files: int | None = None,
        layer: str | None = None,
        model: str | None = None,
        keys: Sequence[str] = (),
        targets: Sequence[Target] = (),
    ) -> PrunePolicy:
        """A policy from what a person asked for; a UsageError when it cannot be carried out."""
        if (
            older_than is None
            and not stale
            and keep_last is None
            and max_size is None
            and max_files is None
            and not keys
        ):
            raise UsageError(
                "prune needs a policy: --older-than, --stale, --keep-last, --max-size, --max-files or --key"
            )
        if stale and not targets:
            raise UsageError("--stale needs the targets that are still deployed: pass --target FILE (repeatable)")
        if (keep_last is not None and keep_last < 0) or (max_size is not None and max_size < 0):
            raise UsageError("--keep-last and --max-size cannot be negative")
        if older_than is not None and older_than < 0:
            raise UsageError("--older-than cannot be negative")
        scope = Scope.of(layer=layer, model=model, keys=keys)
        return cls(older_than, stale, keep_last, max_size, scope, tuple(targets), max_files)
