"""The names of the scores params.yaml may choose, and which way each is better: the one list.

Config validates tune.metric and register.metric against it (core must not import evaluation);
pipeline/evaluation/metrics.py computes every name here, checks so at import, and decides
"better" (direction, improvement) from LOWER_IS_BETTER.
"""

from __future__ import annotations

from typing import Literal, get_args

MonitorMetric = Literal["roc_auc", "average_precision", "accuracy", "f1", "log_loss"]
"""Validation scores a study tunes and training early-stops on (tune.metric)."""
GateMetric = Literal[MonitorMetric, "brier"]
"""Test scores the register gate compares challenger and champion on (register.metric)."""

TuneMetric = Literal[MonitorMetric, "auto"]
"""tune.metric as params.yaml may state it (auto: resolved by the kind of data)."""

MONITOR_METRICS: tuple[str, ...] = get_args(MonitorMetric)
GATE_METRICS: tuple[str, ...] = get_args(GateMetric)
# Scores where a smaller value is better ("loss": the training loss); everything else is
# maximised.
LOWER_IS_BETTER = frozenset({"log_loss", "brier", "loss"})

