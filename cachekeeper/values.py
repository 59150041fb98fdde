"""Frozen values: what facts, keys, records and the store's names are made of.

A ``Value`` declares its fields as annotations, in order, as a NamedTuple or a frozen dataclass
would, and type checkers read it as a frozen dataclass (PEP 681)::

    class Landing(Value):
        gpu: str
        gpu_count: int = 1

Instances are immutable, compare and hash by their fields, copy and pickle, and offer
``_replace()`` and ``_asdict()`` as named tuples do; they are not tuples (no indexing, no
unpacking, no ordering).

Why not NamedTuple or a frozen dataclass: a boot imports about twenty of these before its first
hit, and defining a class is what costs. On a 2-core machine a NamedTuple costs about 0.1 ms to
define, a frozen dataclass about 0.5 ms (both generate and compile source), a Value about 0.01 ms
(bench/boot_breakdown.py). So every frozen record of cachekeeper is a Value, the reports of
commands too, but for one kind: making a Value costs about 2 µs, against 0.5 µs for a named
tuple, so the rows ``ls`` reads by the hundred thousand stay named tuples (manifest/queries.py).
A check a record must pass is its ``checked()`` method, called where it is made.

Annotations written ``ClassVar[...]`` are class attributes, not fields.
"""

from __future__ import annotations

from typing import Any, ClassVar, Self, dataclass_transform

_set = object.__setattr__


@dataclass_transform(frozen_default=True)
class ValueType(type):
    """Makes each annotation of a class body a slot, in order, and keeps its default aside."""

    def __new__(mcs, name: str, bases: tuple[type, ...], namespace: dict[str, Any]) -> ValueType:
        # Under ``from __future__ import annotations`` these are strings: only their names are read.
        annotations: dict[str, Any] = namespace.get("__annotations__", {})
        fields = tuple(field for field, kind in annotations.items() if not str(kind).startswith("ClassVar"))
        inherited = [base for base in bases if getattr(base, "_fields", ())]
        if fields and inherited:
            raise TypeError(f"{name}: a Value with fields cannot be extended with more ({inherited[0].__name__})")
        defaults: dict[str, Any] = {}
        for field in fields:
            if field in namespace:
                defaults[field] = namespace.pop(field)
            elif defaults:
                raise TypeError(f"{name}: field {field!r} has no default but follows one that has")
        namespace["__slots__"] = fields
        if fields:
            namespace["_fields"] = fields
            namespace["_defaults"] = defaults
        return super().__new__(mcs, name, bases, namespace)


class Value(metaclass=ValueType):
    __slots__ = ()
    _fields: ClassVar[tuple[str, ...]] = ()
    _defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        fields = self._fields
        if len(args) > len(fields):
            raise TypeError(f"{type(self).__name__}() takes {len(fields)} values, {len(args)} given")
        for field, value in zip(fields, args, strict=False):
            _set(self, field, value)
        for field in fields[len(args) :]:
            if field in kwargs:
                _set(self, field, kwargs.pop(field))
            elif field in self._defaults:
                _set(self, field, self._defaults[field])
            else:
                raise TypeError(f"{type(self).__name__}() needs {field!r}")
        if kwargs:
            raise TypeError(f"{type(self).__name__}() has no field {next(iter(kwargs))!r}")

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is frozen: use _replace({name}=...)")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is frozen")

    def _values(self) -> tuple[Any, ...]:
        return tuple([getattr(self, field) for field in self._fields])

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and isinstance(other, Value) and other._values() == self._values()

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        shown = ", ".join(f"{field}={getattr(self, field)!r}" for field in self._fields)
        return f"{type(self).__name__}({shown})"

    def __reduce__(self) -> tuple[type[Self], tuple[Any, ...]]:
        return type(self), self._values()

    def _asdict(self) -> dict[str, Any]:
        return {field: getattr(self, field) for field in self._fields}

    def _replace(self, **changes: Any) -> Self:
        return type(self)(**{**self._asdict(), **changes})
