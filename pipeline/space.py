"""The tuning search space's schema: one tuned key and the checks that keep it sampleable."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from pipeline.errors import ConfigError
from pipeline.typed import apply_overrides, field_type, require


@dataclass(frozen=True)
class SearchParam:
    """One tuned key: a numeric range (optionally log-scaled) or a list of choices."""

    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] | None = None


def check_search_param(key: str, spec: SearchParam, train: Any, model: Any) -> None:
    """A tuned key must name a train/model field, with a valid range or valid choices."""
    full = f"tune.search_space.{key}"
    section, _, name = key.partition(".")
    base = {"train": train, "model": model}.get(section)
    require(base is not None and name in {f.name for f in dataclasses.fields(base)}, full, key,
             "is not a train.* or model.* key")
    if spec.choices is not None:
        require(spec.low is None and spec.high is None, full, spec,
                 "give either choices or low/high, not both")
        require(len(spec.choices) > 0, f"{full}.choices", list(spec.choices), "must not be empty")
        for choice in spec.choices:
            try:
                apply_overrides(base, {name: choice}, section)  # builds the section: validates
            except ConfigError as err:
                raise ConfigError(f"{full}.choices: {err}") from None
        return
    require(spec.low is not None and spec.high is not None, full, spec,
             "needs low and high, or choices")
    assert spec.low is not None and spec.high is not None
    require(spec.low < spec.high, f"{full}.low", spec.low, f"must be < high ({spec.high})")
    require(not spec.log or spec.low > 0, f"{full}.low", spec.low, "must be > 0 with log: true")
    require(field_type(type(base), name) in (int, float), full, key,
             "a range needs a numeric key; use choices")
    for end in ("low", "high"):
        value = getattr(spec, end)
        if field_type(type(base), name) is int and float(value).is_integer():
            value = int(value)  # YAML ranges are read as floats; 16.0 is a fine batch size
        try:
            apply_overrides(base, {name: value}, section)  # within the key's own range
        except ConfigError as err:
            raise ConfigError(f"{full}.{end}: {err}") from None
