"""The tuning search space's schema: one tuned key and the checks that keep it sampleable."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pipeline.core.errors import ConfigError
from pipeline.core.typed import apply_overrides, field_type, require


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
        # Optuna stores a choice as JSON and compares it again on resume: plain values only.
        require(all(c is None or isinstance(c, bool | int | float | str) for c in spec.choices),
                f"{full}.choices", list(spec.choices), "Optuna tunes only plain values "
                "(numbers, strings, true/false, null), not lists")
        require(len(set(spec.choices)) == len(spec.choices), f"{full}.choices",
                list(spec.choices), "lists a value twice")
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


def check_space(space: Mapping[str, SearchParam], train: Any, model: Any,
                batch_norm: tuple[str, ...]) -> None:
    """Every tuned key is sampleable, and no sampled model meets a batch of one in training."""
    for key, spec in space.items():
        check_search_param(key, spec, train, model)
    check_batch_norm(space, train, model, batch_norm)


def values_of(space: Mapping[str, SearchParam], key: str, fixed: Any) -> list[Any]:
    """The values `key` may take: its choices, its range's two ends, or the fixed value."""
    spec = space.get(key)
    if spec is None:
        return [fixed]
    if spec.choices is not None:
        return list(spec.choices)
    return [math.ceil(spec.low or 0), spec.high]


def check_batch_norm(space: Mapping[str, SearchParam], train: Any, model: Any,
                     batch_norm: tuple[str, ...]) -> None:
    """A BatchNorm layer in training mode fails on one sample per batch (the loop never makes
    a last batch of one, see pipeline/models/feed.py; a batch size of 1 would make them all so)."""
    types = [t for t in values_of(space, "model.type", model.type) if t in batch_norm]
    trained = "none" in values_of(space, "model.freeze", model.freeze)  # frozen: BN in eval
    smallest = min(values_of(space, "train.batch_size", train.batch_size))
    if types and trained and smallest < 2:
        key = ("tune.search_space.train.batch_size" if "train.batch_size" in space
               else "train.batch_size")
        raise ConfigError(f"{key} = {smallest!r}: model.type {types[0]!r} trains BatchNorm "
                          "layers, which need at least 2 samples per batch; use a batch size "
                          ">= 2 (or model.type logreg/mlp)")
