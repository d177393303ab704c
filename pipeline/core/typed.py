"""Typed frozen dataclasses from YAML mappings: coercion, validation helpers, overrides."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Literal

from pipeline.core.errors import ConfigError


def require(ok: bool, key: str, value: object, why: str) -> None:
    """Raise ConfigError naming the key and the value unless `ok`."""
    if not ok:
        raise ConfigError(f"{key} = {value!r}: {why}")


def in_range(obj: object, names: str, low: float, high: float = float("inf"), *,
             low_open: bool = False, high_open: bool = False) -> None:
    """Check each named field of `obj` lies in the interval; the error names field and value."""
    for name in names.split():
        value = getattr(obj, name)
        ok = (value > low if low_open else value >= low) and (
            value < high if high_open else value <= high)
        if high == float("inf"):
            why = f"must be {'>' if low_open else '>='} {low:g}"
        else:
            why = (f"must be in {'(' if low_open else '['}{low:g}, {high:g}"
                   f"{')' if high_open else ']'}")
        require(ok, name, value, why)


def field_type(cls: type, name: str) -> Any:
    """The annotated type of one dataclass field (resolved from the string annotation)."""
    return typing.get_type_hints(cls)[name]


def coerce(kind: Any, value: Any, key: str) -> Any:
    """Convert one YAML value to the annotated type, or raise ConfigError naming the key."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return coerce(options[0], value, key)  # Optional[X]: X's own message is clearest
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(arg, value, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key} = {value!r}: expected one of {_describe(kind)}")
    if origin is Literal:
        require(value in args and type(value) in {type(a) for a in args}, key, value,
                 f"must be one of {list(args)}")
        return value
    if dataclasses.is_dataclass(kind):
        require(isinstance(value, dict | None), key, value, "must be a mapping")
        return build(kind, value or {}, key)  # type: ignore[arg-type]
    if origin is tuple:
        require(isinstance(value, list | tuple), key, value, "must be a list")
        return tuple(coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        require(isinstance(value, dict), key, value, "must be a mapping")
        return {str(k): coerce(args[1], v, f"{key}.{k}") for k, v in value.items()}
    if kind is Any:
        return value
    if kind is bool:
        require(isinstance(value, bool), key, value, "must be true or false")
        return value
    if kind is int:
        require(isinstance(value, int) and not isinstance(value, bool), key, value,
                 "must be an integer")
        # torch and numpy index, seed and count in 64 bits; a larger value fails deep inside.
        require(-2**63 <= value < 2**63, key, value, "does not fit a 64-bit integer")
        return value
    if kind is float:
        # YAML reads 1e-4 (no dot) as a string; accept it as a number like a person would.
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{key} = {value!r}: must be a number") from None
        require(isinstance(value, int | float) and not isinstance(value, bool), key, value,
                 "must be a number")
        require(math.isfinite(value), key, value, "must be a finite number")
        return float(value)
    if kind is str:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)  # a class label such as 1 is a string for matching purposes
        require(isinstance(value, str), key, value, "must be a string")
        return value
    raise TypeError(f"unsupported config type {kind!r} for {key}")


def _describe(kind: Any) -> str:
    return " | ".join(str(list(typing.get_args(a))) if typing.get_origin(a) is Literal
                      else getattr(a, "__name__", str(a)) for a in typing.get_args(kind))


def build(cls: type, raw: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass `cls` from a mapping; an unknown key is an error naming it."""
    names = {f.name for f in dataclasses.fields(cls)}
    for key in sorted(set(raw) - names):
        where = f"{prefix}.{key}" if prefix else key
        raise ConfigError(f"{where}: unknown key (known: {', '.join(sorted(names))})")
    kwargs = {name: coerce(field_type(cls, name), value, f"{prefix}.{name}" if prefix else name)
              for name, value in raw.items()}
    try:
        return cls(**kwargs)
    except ConfigError as err:
        if prefix and not str(err).startswith(prefix):
            raise ConfigError(f"{prefix}.{err}") from None
        raise


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten a config (or section) to dotted keys, e.g. for MLflow params."""
    out: dict[str, Any] = {}
    items = (dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj).items()
    for key, value in items:
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value and not name.endswith("search_space"):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def apply_overrides(section: Any, overrides: dict[str, Any], prefix: str) -> Any:
    """Return `section` with `{field: value}` overrides coerced to their types and validated."""
    cls = type(section)
    names = {f.name for f in dataclasses.fields(cls)}
    for name in overrides:
        if name not in names:
            raise ConfigError(f"{prefix}.{name}: unknown key (known: {', '.join(sorted(names))})")
    values = {k: coerce(field_type(cls, k), v, f"{prefix}.{k}") for k, v in overrides.items()}
    try:
        return dataclasses.replace(section, **values)
    except ConfigError as err:
        raise ConfigError(f"{prefix}.{err}") from None


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Nested params mappings merged key by key; `extra` wins (tests and benchmarks use it)."""
    out = dict(base)
    for key, value in extra.items():
        out[key] = (deep_merge(out[key], value)
                    if isinstance(value, dict) and isinstance(out.get(key), dict) else value)
    return out
