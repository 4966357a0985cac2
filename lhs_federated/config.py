"""Typed configuration tables: TOML mappings checked once into frozen dataclasses.

Studies, data contracts and site configurations are all TOML. Each is declared
as a frozen dataclass whose fields carry their constraints (:func:`setting`);
:func:`build` checks a parsed table against that declaration once, at the
boundary, so inner code can trust what it receives. Every error names the file,
the key, what was expected and what was found, and unknown keys are errors
(with a "did you mean") because a misspelt key silently falling back to its
default would give a plausible-looking but wrong study.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import ipaddress
import math
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

from lhs_federated.errors import ConfigError

T = TypeVar("T")

_MISSING = dataclasses.MISSING


def setting(
    default: Any = _MISSING,
    *,
    doc: str,
    default_factory: Any = _MISSING,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
) -> Any:
    """Declare a configuration field with its documentation and numeric bounds.

    Parameters
    ----------
    default, default_factory
        As for :func:`dataclasses.field`; neither means the key is required.
    doc : str
        One line saying what the key means; shown in errors for missing keys.
    ge, gt, le, lt : float, optional
        Inclusive and exclusive bounds for numbers (and for each number of a
        list of numbers).
    """
    metadata = {"doc": doc, "ge": ge, "gt": gt, "le": le, "lt": lt}
    if default_factory is not _MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def read_toml(path: str | Path, *, what: str) -> dict[str, Any]:
    """Parse a TOML file, turning every failure into a :class:`ConfigError`.

    Parameters
    ----------
    path : str or Path
        The file to read.
    what : str
        What the file is meant to be ("study", "data contract"), for messages.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"{what} file {str(path)!r} does not exist (or is not a file). "
            f"Check the path; relative paths are taken from {str(Path.cwd())!r}."
        )
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc}).") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a UTF-8 text file ({exc}).") from exc


def build(cls: type[T], table: Any, *, source: str, section: str = "") -> T:
    """Check ``table`` against the dataclass ``cls`` and construct it.

    Parameters
    ----------
    cls : type
        A dataclass whose fields were declared with :func:`setting`.
    table : Mapping
        The parsed TOML table (or an already built ``cls`` instance).
    source : str
        The file (or other origin) named in error messages.
    section : str
        The dotted key of ``table`` inside its file, for error messages.

    Raises
    ------
    ConfigError
        On an unknown key, a missing required key, a wrong type or a value out
        of its declared range.
    """
    if isinstance(table, cls):
        return table
    where = f"[{section}]" if section else "the top level"
    if not isinstance(table, Mapping):
        raise ConfigError(
            f"{source}: {section or 'the file'} must be a table; got {_describe(table)}."
        )
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = _type_hints(cls)
    unknown = [key for key in table if key not in fields]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key), list(fields), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"{source}: unknown key {_join(section, str(key))!r} in {where}.{hint} "
            f"Valid keys there: {', '.join(sorted(fields))}."
        )
    values: dict[str, Any] = {}
    for name, field in fields.items():
        key = _join(section, name)
        if name not in table:
            required = field.default is _MISSING and field.default_factory is _MISSING
            if required:
                doc = field.metadata.get("doc", "")
                raise ConfigError(
                    f"{source}: missing required key {key!r} ({doc})."
                    if doc
                    else f"{source}: missing required key {key!r}."
                )
            continue
        value = _convert(hints[name], table[name], source=source, key=key)
        _check_bounds(field, value, source=source, key=key)
        values[name] = value
    try:
        return cls(**values)
    except ValueError as exc:
        raise ConfigError(f"{source}: in {where}: {exc}") from exc


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def to_plain(obj: Any) -> Any:
    """Turn a config dataclass into plain dicts, lists and scalars.

    ``None`` values are dropped, since TOML has no null and a dropped key
    reloads as its ``None`` default: the plain form round-trips through TOML.
    """
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        plain = {}
        for field in dataclasses.fields(obj):
            value = getattr(obj, field.name)
            if value is not None:
                plain[field.name] = to_plain(value)
        return plain
    if isinstance(obj, Mapping):
        return {str(k): to_plain(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _join(section: str, key: str) -> str:
    return f"{section}.{key}" if section else key


def _describe(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def _convert(hint: Any, value: Any, *, source: str, key: str) -> Any:
    """Check ``value`` against the type ``hint``; return it in its final form."""
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        options = [o for o in get_args(hint) if o is not type(None)]
        if value is None and type(None) in get_args(hint):
            return None
        candidates = [o for o in options if _same_kind(o, value)]
        if len(candidates) == 1:
            return _convert(candidates[0], value, source=source, key=key)
        for option in candidates:
            try:
                return _convert(option, value, source=source, key=key)
            except ConfigError:
                continue
        expected = " or ".join(_name(o) for o in options)
        raise ConfigError(f"{source}: {key} must be {expected}; got {_describe(value)}.")
    if origin is Literal:
        choices = get_args(hint)
        if value not in choices:
            close = difflib.get_close_matches(str(value), [str(c) for c in choices], 1)
            hint_text = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"{source}: {key} must be one of "
                f"{', '.join(repr(c) for c in choices)}; got {_describe(value)}."
                f"{hint_text}"
            )
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(
                f"{source}: {key} must be a list of {_name(get_args(hint)[0])}; "
                f"got {_describe(value)}."
            )
        item_hint = get_args(hint)[0]
        items = [
            _convert(item_hint, item, source=source, key=f"{key}[{index}]")
            for index, item in enumerate(value)
        ]
        return tuple(items)
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{source}: {key} must be a table; got {_describe(value)}.")
        item_hint = get_args(hint)[1]
        return {
            str(k): _convert(item_hint, v, source=source, key=f"{key}.{k}")
            for k, v in value.items()
        }
    if dataclasses.is_dataclass(hint):
        return build(hint, value, source=source, section=key)
    if hint is Any:
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: {key} must be true or false; got {_describe(value)}.")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: {key} must be an integer; got {_describe(value)}.")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: {key} must be a number; got {_describe(value)}.")
        if not math.isfinite(value):
            # TOML reads 1e400 as inf: never a meaningful setting.
            raise ConfigError(f"{source}: {key} must be a finite number; got {value!r}.")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{source}: {key} must be a string; got {_describe(value)}.")
        return value
    raise TypeError(f"unsupported configuration type {hint!r} for {key}")


def _same_kind(hint: Any, value: Any) -> bool:
    """Whether ``value`` is the kind of thing ``hint`` describes (table, list, scalar)."""
    if dataclasses.is_dataclass(hint) or get_origin(hint) in (dict, Mapping):
        return isinstance(value, Mapping)
    if get_origin(hint) in (list, tuple):
        return isinstance(value, (list, tuple))
    return not isinstance(value, (Mapping, list, tuple))


def _check_bounds(field: dataclasses.Field, value: Any, *, source: str, key: str) -> None:
    numbers = value if isinstance(value, tuple) else (value,)
    for number in numbers:
        if isinstance(number, bool) or not isinstance(number, (int, float)):
            continue
        for bound, test, words in (
            ("ge", lambda v, b: v >= b, ">="),
            ("gt", lambda v, b: v > b, ">"),
            ("le", lambda v, b: v <= b, "<="),
            ("lt", lambda v, b: v < b, "<"),
        ):
            limit = field.metadata.get(bound)
            if limit is not None and not test(number, limit):
                raise ConfigError(
                    f"{source}: {key} must be {words} {_show(limit)}; got {number!r} "
                    f"(accepted: {accepted_range(field)})."
                )


def _show(limit: float) -> str:
    """A bound as people write it: 1000000, 0.5, 1e-05."""
    return str(int(limit)) if float(limit).is_integer() and abs(limit) < 1e15 else f"{limit:g}"


def accepted_range(field: dataclasses.Field) -> str:
    """A field's declared bounds in words (``>= 1 and <= 1000``)."""
    words = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
    parts = [
        f"{words[bound]} {_show(field.metadata[bound])}"
        for bound in words
        if field.metadata.get(bound) is not None
    ]
    return " and ".join(parts)


def is_host(host: str) -> bool:
    """Whether ``host`` is an IP address or a DNS name (labels of letters, digits, '-')."""
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    labels = host.rstrip(".").split(".")
    return 0 < len(host) <= 253 and all(
        0 < len(label) <= 63
        and label[0] != "-"
        and label[-1] != "-"
        and all(c.isascii() and (c.isalnum() or c == "-") for c in label)
        for label in labels
    )


def is_plain_name(name: str) -> bool:
    """Whether ``name`` is letters, digits, '-', '_' or '.' (it names folders and sites)."""
    return bool(name) and len(name) <= 64 and all(c.isalnum() or c in "-_." for c in name)


def _name(hint: Any) -> str:
    if dataclasses.is_dataclass(hint):
        return "a table"
    if get_origin(hint) is Literal:
        return "one of " + ", ".join(repr(c) for c in get_args(hint))
    if get_origin(hint) in (list, tuple):
        return "a list"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        hint, getattr(hint, "__name__", str(hint))
    )
