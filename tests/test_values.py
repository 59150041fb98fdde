"""Frozen values (cachekeeper/values.py): what named tuples gave the boot's records, without their cost."""

from __future__ import annotations

import copy
import pickle

import pytest

from cachekeeper.facts import Fact, Source
from cachekeeper.gpus import Landing
from cachekeeper.values import Value


class Point(Value):
    x: int
    y: int = 0
    label: str = ""


def test_fields_take_positions_keywords_and_defaults_in_declared_order():
    assert Point._fields == ("x", "y", "label")
    assert Point(1) == Point(x=1, y=0, label="")
    assert Point(1, 2, "a")._asdict() == {"x": 1, "y": 2, "label": "a"}
    assert Point(1, label="b").y == 0


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [((), {}, "needs 'x'"), ((1, 2, "a", 4), {}, "takes 3 values, 4 given"), ((1,), {"z": 2}, "has no field 'z'")],
)
def test_a_wrong_call_names_what_is_wrong(args, kwargs, message):
    with pytest.raises(TypeError, match=message):
        Point(*args, **kwargs)


def test_a_value_cannot_change_and_replace_makes_a_new_one():
    point = Point(1, 2)
    with pytest.raises(AttributeError, match="frozen"):
        point.x = 5  # type: ignore[misc]
    with pytest.raises(AttributeError, match="frozen"):
        del point.x  # type: ignore[misc]
    with pytest.raises(AttributeError):
        point.other = 1  # type: ignore[attr-defined]
    moved = point._replace(y=7)
    assert (point.y, moved.y, moved.x) == (2, 7, 1)


def test_equality_and_hash_go_by_type_and_fields():
    class Other(Value):
        x: int
        y: int = 0
        label: str = ""

    assert Point(1, 2) == Point(1, 2) and hash(Point(1, 2)) == hash(Point(1, 2))
    assert Point(1, 2) != Point(2, 1)
    assert Point(1, 2) != Other(1, 2)
    assert Point(1, 2) != (1, 2, "")  # not a tuple
    assert len({Point(1), Point(1), Point(2)}) == 2


def test_repr_names_each_field():
    assert repr(Point(1, label="a")) == "Point(x=1, y=0, label='a')"


@pytest.mark.parametrize(
    "value", [Point(3, 4, "z"), Fact("torch", "2.13.0", Source.OBSERVED), Landing("H100", 2)], ids=repr
)
def test_values_copy_and_pickle_to_equal_values(value):
    assert copy.copy(value) == value
    assert copy.deepcopy(value) == value
    assert pickle.loads(pickle.dumps(value)) == value


def test_a_default_before_a_required_field_is_refused_where_the_class_is_defined():
    with pytest.raises(TypeError, match="'y' has no default but follows one that has"):

        class Broken(Value):
            x: int = 0
            y: int


def test_a_value_with_fields_cannot_be_extended_with_more():
    with pytest.raises(TypeError, match="cannot be extended"):

        class Point3(Point):
            z: int = 0
