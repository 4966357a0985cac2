from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pytest

from lhs_federated.config import build, setting, to_plain
from lhs_federated.errors import ConfigError


@dataclass(frozen=True)
class Inner:
    rate: float = setting(0.1, doc="a rate", gt=0, le=1)
    kind: Literal["a", "b"] = setting("a", doc="a kind")


@dataclass(frozen=True)
class Outer:
    name: str = setting(doc="required name")
    count: int = setting(3, doc="a count", ge=1)
    widths: tuple[int, ...] = setting((8,), doc="widths", ge=1)
    inner: Inner = setting(default_factory=Inner, doc="inner table")
    maybe: int | None = setting(None, doc="optional")


def test_build_converts_and_fills_defaults():
    outer = build(Outer, {"name": "x", "widths": [4, 5], "inner": {"rate": 1}}, source="f.toml")
    assert outer == Outer(name="x", widths=(4, 5), inner=Inner(rate=1.0))
    assert isinstance(outer.inner.rate, float)
    assert to_plain(outer) == {
        "name": "x",
        "count": 3,
        "widths": [4, 5],
        "inner": {"rate": 1.0, "kind": "a"},
    }


@pytest.mark.parametrize(
    ("table", "match"),
    [
        ({}, r"f\.toml: missing required key 'name' \(required name\)"),
        (
            {"name": "x", "cuont": 2},
            r"unknown key 'cuont' in the top level\. Did you mean 'count'\?",
        ),
        (
            {"name": "x", "inner": {"rat": 2}},
            r"unknown key 'inner\.rat' in \[inner\]\. Did you mean 'rate'",
        ),
        ({"name": "x", "count": "3"}, r"count must be an integer; got '3' \(str\)"),
        ({"name": "x", "count": True}, r"count must be an integer; got True \(bool\)"),
        ({"name": "x", "count": 0}, r"count must be >= 1; got 0"),
        ({"name": "x", "inner": {"rate": 0}}, r"inner\.rate must be > 0; got 0\.0"),
        ({"name": "x", "inner": {"kind": "c"}}, r"inner\.kind must be one of 'a', 'b'; got 'c'"),
        ({"name": "x", "widths": [4, 0]}, r"widths must be >= 1; got 0"),
        ({"name": "x", "widths": 4}, r"widths must be a list of an integer; got 4"),
        ({"name": "x", "inner": 5}, r"inner must be a table; got 5"),
        ({"name": "x", "maybe": "no"}, r"maybe must be an integer; got 'no'"),
    ],
)
def test_build_errors_name_file_key_and_value(table, match):
    with pytest.raises(ConfigError, match=match):
        build(Outer, table, source="f.toml")
