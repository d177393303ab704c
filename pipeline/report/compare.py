"""The comparison behind the experiment report: two revisions' outputs → rows a reviewer reads.

Pure: the files were read (pipeline/report/cli.py) and the rows are rendered
(pipeline/report/render.py) elsewhere, so this is where what counts as changed, better or
worse is decided.
"""

from __future__ import annotations

import math
import posixpath
from dataclasses import dataclass, field, replace
from typing import Any

from pipeline.core import layout
from pipeline.core.typed import flatten
from pipeline.evaluation.metrics import improvement
from pipeline.report.render import Report, Row, Section, fmt, fmt_change
from pipeline.report.runs import run_rows

WORKSPACE = "workspace"
# The files the report reads, as dvc.yaml declares them.
METRICS = layout.in_reports(layout.METRICS)
TRAIN_METRICS = layout.in_reports(layout.TRAIN_METRICS)
BEST_PARAMS = layout.in_models(layout.BEST_PARAMS)
REGISTRATION = layout.in_reports(layout.REGISTRATION)
PARAMS, LOCK = "params.yaml", "dvc.lock"
# What a result was computed from: the content hashes dvc.lock records for these outputs.
PROCESSED = "data/processed"  # the validation and test splits: another hash, other splits
LINEAGE = ("data/raw", PROCESSED, "data/augmented", "models/model.safetensors")
# train_metrics.json's map of the values train used where params.yaml does not say them.
TRAINED = "trained"
# metrics.json keys that are settings or counts, not scores: a change is shown, never judged.
UNJUDGED = frozenset({"threshold", "threshold_rule", "n", "tn", "fp", "fn", "tp"})


@dataclass
class Side:
    """One revision's outputs as read; what could not be read is explained in `missing`."""

    label: str
    commit: str
    dirty: bool = False
    data: dict[str, Any] = field(default_factory=dict)
    figures: dict[str, bytes] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)

    def get(self, path: str) -> dict[str, Any]:
        """The parsed file at `path`, or {} when it could not be read."""
        return self.data.get(path) or {}


def judged_rows(base: dict[str, Any], new: dict[str, Any],
                judge: dict[str, str | None]) -> list[Row]:
    """Rows of the keys in either dict, judged by `judge[key]`'s direction (None: not judged)."""
    rows = []
    for key in sorted(set(base) | set(new)):
        old, cur = base.get(key), new.get(key)
        numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (old, cur))
        change: float | str | None = (cur - old if numbers
                                      else None if old == cur else "changed")
        verdict, metric = "", judge.get(key)
        # NaN compares false both ways, so a failed score would read as "worse": no verdict.
        if numbers and metric is not None and math.isfinite(old) and math.isfinite(cur):
            gain = improvement(metric, float(cur), float(old))
            verdict = "same" if gain == 0 else "better" if gain > 0 else "worse"
        rows.append(Row(key, old, cur, change, verdict))
    return rows


def splits_differ(base: Side, new: Side) -> str:
    """Why the two sides' test and validation splits differ ("" when the same or unknown)."""
    old, cur = (lock_hashes(side.get(LOCK)).get(PROCESSED) for side in (base, new))
    return f"{PROCESSED} differs in dvc.lock" if old and cur and old != cur else ""


def folds_differ(base: Side, new: Side) -> str:
    """Why best_val_* means different things at the two sides ("" when it does not)."""
    old, cur = (side.get(TRAIN_METRICS).get("cv_folds") for side in (base, new))
    # 0 folds: a score on the validation split; k folds: the folds' mean.
    return (f"cv_folds differ ({old} → {cur})" if old is not None and cur is not None
            and old != cur else "")


def metric_rows(base: Side, new: Side) -> list[Row]:
    """Test metrics (metrics.json): every key with its change, judged by its direction."""
    old, cur = base.get(METRICS), new.get(METRICS)
    same_split = not splits_differ(base, new)
    return judged_rows(old, cur, {k: None if k in UNJUDGED or not same_split else k
                                  for k in {*old, *cur}})


def training_rows(base: Side, new: Side) -> list[Row]:
    """The training summary (train_metrics.json); best_val_<metric> judged as <metric>."""
    old, cur = (flatten({k: v for k, v in side.get(TRAIN_METRICS).items() if k != TRAINED})
                for side in (base, new))
    comparable = not (splits_differ(base, new) or folds_differ(base, new))
    judge = {k: k.removeprefix("best_val_") if k.startswith("best_val_") and comparable
             else None for k in {*old, *cur}}
    return judged_rows(old, cur, judge)


def param_rows(base: Side, new: Side) -> list[Row]:
    """params.yaml keys whose values differ (the requested settings)."""
    old, cur = flatten(base.get(PARAMS)), flatten(new.get(PARAMS))
    return [Row(k, old.get(k), cur.get(k), "changed") for k in sorted({*old, *cur})
            if old.get(k) != cur.get(k)]


def tuned_rows(base: Side, new: Side) -> list[Row]:
    """best_params.json: the tuned values train used in place of params.yaml, and the score."""
    old, cur = base.get(BEST_PARAMS), new.get(BEST_PARAMS)
    rows = judged_rows(old.get("params") or {}, cur.get("params") or {}, {})
    metrics = (old.get("metric"), cur.get("metric"))
    if metrics[0] and metrics[1] and metrics[0] != metrics[1]:
        # Scores of different metrics: one unjudged row per side, each under its own name.
        return [*rows, Row(f"best val {old['metric']} (study)", old.get("value"), None),
                Row(f"best val {cur['metric']} (study)", None, cur.get("value"))]
    metric = metrics[1] or metrics[0]
    if metric:
        # The study scored its trials on the validation split: another split, no verdict.
        judge = {"value": None if splits_differ(base, new) else metric}
        rows += [replace(row, name=f"best val {metric} (study)")
                 for row in judged_rows({"value": old.get("value")},
                                        {"value": cur.get("value")}, judge)
                 if row.base is not None or row.new is not None]
    return rows


def trained_rows(base: Side, new: Side) -> list[Row]:
    """Values train used where params.yaml does not say them, tuned ones aside (shown there)."""
    old, cur = (side.get(TRAIN_METRICS).get(TRAINED) or {} for side in (base, new))
    # train_metrics.json repeats every tuned key; the Tuned table already shows them.
    tuned = {k for side in (base, new) for k in side.get(BEST_PARAMS).get("params") or {}}
    return judged_rows({k: v for k, v in old.items() if k not in tuned},
                       {k: v for k, v in cur.items() if k not in tuned}, {})


def tuned_note(base: Side, new: Side) -> str:
    """Where tuning was off: train used params.yaml as it stands."""
    off = [side.label for side in (base, new)
           if side.get(BEST_PARAMS) and not side.get(BEST_PARAMS).get("enabled")]
    return (f"Tuning was off (tune.enabled: false) at {' and '.join(off)}: train used "
            "params.yaml as it stands." if off else "")


def compared_with(registration: dict[str, Any]) -> str | None:
    """The champion version this registration's gate compared with (from the audit trail)."""
    version = registration.get("version")
    entries = [e for e in registration.get("audit") or [] if e.get("version") == version]
    if not entries:
        return None
    before = entries[-1].get("champion_before")
    return "no champion" if before is None else f"v{before}"


def gate_fields(reg: dict[str, Any]) -> dict[str, Any]:
    """What a reviewer asks of a gate: which version, what decided, against whom."""
    if not reg:
        return {}
    after = reg.get("champion_version")
    return {"registered version": f"{reg.get('model_name')} v{reg.get('version')}",
            "decision": reg.get("outcome"), "gate metric": reg.get("metric"),
            "challenger score": reg.get("challenger_score"),
            "compared with champion": compared_with(reg),
            "champion score": reg.get("champion_score"),
            "champion after": None if after is None else f"v{after}",
            "reason": reg.get("reason")}


def gate_rows(base: Side, new: Side) -> list[Row]:
    """The gate decision at each side, field by field."""
    old, cur = gate_fields(base.get(REGISTRATION)), gate_fields(new.get(REGISTRATION))
    keys = list(cur or old)
    return [Row(k, old.get(k), cur.get(k), None if old.get(k) == cur.get(k) else "changed")
            for k in keys]


def lock_hashes(lock: dict[str, Any]) -> dict[str, str]:
    """Content hash per path in a dvc.lock: outputs first, else as a dependency."""
    found: dict[str, str] = {}
    for kind in ("outs", "deps"):
        for stage in (lock.get("stages") or {}).values():
            for entry in stage.get(kind) or []:
                # "hash" names the algorithm (md5), not the value: only the value fields.
                found.setdefault(entry["path"], entry.get("md5") or entry.get("etag")
                                 or entry.get("checksum") or "")
    return found


def lineage_rows(base: Side, new: Side) -> list[Row]:
    """Git commits and the dvc.lock hashes of the data and the model at each side."""
    def commit(side: Side) -> str:
        return side.commit[:12] + (" + uncommitted changes" if side.dirty else "")

    rows = [Row("git commit", commit(base), commit(new),
                None if commit(base) == commit(new) else "changed")]
    old, cur = lock_hashes(base.get(LOCK)), lock_hashes(new.get(LOCK))
    for path in LINEAGE:
        a, b = old.get(path), cur.get(path)
        rows.append(Row(path, a, b, "same" if a == b and a else "changed" if a or b else None))
    return rows


def summary(base: Side, new: Side, sections: dict[str, list[Row]]) -> list[str]:
    """The lines a reviewer reads first: verdict counts, the gate and what was changed."""
    verdicts = [r.verdict for r in sections["metrics"] if r.verdict]
    split = splits_differ(base, new)
    lines = [f"Test sets differ ({split}): the metrics are not comparable row for row, so "
             "none is judged."] if split else [
        f"Test metrics: {verdicts.count('better')} better, {verdicts.count('worse')} "
        f"worse, {verdicts.count('same')} unchanged."] if verdicts else [
        "Test metrics: not available at both revisions (see Missing)."]
    folds = folds_differ(base, new)
    if folds and not split:
        lines.append(f"Training scores not judged: {folds}, so best_val_* is a fold mean at "
                     "one revision and a validation score at the other.")
    gate = {r.name: r.new for r in sections["gate"]}
    # The metric the gate decides on is the one a reviewer weighs first.
    metric = gate.get("gate metric") or "roc_auc"
    for row in sections["metrics"]:
        if row.name == metric and row.verdict:
            lines.append(f"{metric}: {fmt(row.base)} → {fmt(row.new)} "
                         f"({fmt_change(row.change)}, {row.verdict}).")
    if gate.get("decision"):
        lines.append(f"Gate: {gate['registered version']} {gate['decision']} "
                     f"(compared with {gate['compared with champion'] or 'unknown'}).")
    changed = [r.name for r in sections["params"]] + [
        f"{r.name} ({kind})" for kind in ("tuned", "trained") for r in sections[kind]
        if r.change not in (None, 0, 0.0) and not r.name.startswith("best val")]
    lines.append(f"Changed params: {', '.join(changed)}." if changed else "No params changed.")
    if base.missing or new.missing:
        lines.append("Some outputs could not be read: see Missing.")
    return lines


def build_report(base: Side, new: Side, tracking_uri: str) -> Report:
    """The whole comparison, ready to render."""
    parts = {"metrics": metric_rows(base, new), "training": training_rows(base, new),
             "params": param_rows(base, new), "tuned": tuned_rows(base, new),
             "trained": trained_rows(base, new),
             "gate": gate_rows(base, new), "lineage": lineage_rows(base, new)}
    # registration.json names the registering run and its experiment; train writes no run id.
    runs, runs_note = run_rows(
        {posixpath.basename(REGISTRATION): (base.get(REGISTRATION), new.get(REGISTRATION))},
        (base.get(REGISTRATION), new.get(REGISTRATION)), tracking_uri)
    titles = {"metrics": f"Test metrics ({METRICS})",
              "training": f"Training ({TRAIN_METRICS})",
              "params": f"Params that differ ({PARAMS})",
              "tuned": f"Tuned params used by train ({BEST_PARAMS})",
              "trained": f"Trained with, where params.yaml does not say it "
                         f"({TRAIN_METRICS}: {TRAINED})",
              "gate": f"Gate decision ({REGISTRATION})",
              "lineage": "Data lineage (dvc.lock)"}
    split, folds = splits_differ(base, new), folds_differ(base, new)
    notes = {"tuned": tuned_note(base, new),
             "metrics": f"Not judged: {split} (another test split)." if split else "",
             "training": f"Not judged: {split or folds}." if split or folds else ""}
    # The "trained" map is newer than some revisions: shown where either side has it.
    sections = [Section(titles[k], rows, notes.get(k, "")) for k, rows in parts.items()
                if rows or k != "trained"]
    sections.append(Section("MLflow runs", runs, runs_note))
    names = sorted({*base.figures, *new.figures})
    return Report(base.label, base.commit, new.label, new.commit, summary(base, new, parts),
                  sections, [(n, base.figures.get(n), new.figures.get(n)) for n in names],
                  [(side.label, note) for side in (base, new) for note in side.missing])
