"""A scope: which artifacts a command looks at (a layer, a model, some keys; all by default)."""

from __future__ import annotations

from collections.abc import Sequence

from .errors import UsageError
from .facts import is_repo_id
from .keys import is_layer_name, parse_key
from .layers import DEFAULT_LAYERS
from .store import Artifact
from .values import Value


class Scope(Value):
    layer: str | None = None
    model: str | None = None
    keys: tuple[str, ...] = ()

    @classmethod
    def of(cls, *, layer: str | None = None, model: str | None = None, keys: Sequence[str] = ()) -> Scope:
        """A scope from what a person typed, refused when nothing could ever be recorded under it: a
        typo would otherwise select nothing and say nothing."""
        if layer is not None and not is_layer_name(layer):
            known = ", ".join(each.name for each in DEFAULT_LAYERS)
            raise UsageError(f"{layer!r} is not a layer name: use {known}, or a layer a target defines")
        if model is not None and not is_repo_id(model):
            raise UsageError(f"model {model!r} is not a Hugging Face repo id such as org/name")
        for key in keys:
            parse_key(key)
        return cls(layer, model, tuple(keys))

    @property
    def whole(self) -> bool:
        """Whether the scope is everything (no layer, model or key given)."""
        return self.layer is None and self.model is None and not self.keys

    def matches(self, artifact: Artifact) -> bool:
        return (
            (self.layer is None or artifact.layer == self.layer)
            and (self.model is None or artifact.model == self.model)
            and (not self.keys or artifact.key in self.keys)
        )


EVERYTHING = Scope()
