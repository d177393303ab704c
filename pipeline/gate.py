"""The champion/challenger gate: which of today's test rows are fair to compare on (neither
model learned from them), both models' scores there, and the decision."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipeline import fingerprints
from pipeline.config import RegisterConfig
from pipeline.dataset import Split
from pipeline.errors import PipelineError
from pipeline.metrics import binary_metrics, direction, improvement

CHAMPION, CHALLENGER = "champion", "challenger"


def aliased(client: MlflowClient, name: str, alias: str = CHAMPION) -> ModelVersion | None:
    """The version holding `alias` (the champion by default), if any."""
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as err:
        # Only "no such model / alias" means none: a store error must not read as "no
        # champion yet" (the challenger would be promoted without a comparison).
        if err.error_code == "RESOURCE_DOES_NOT_EXIST" or (
                err.error_code == "INVALID_PARAMETER_VALUE" and "alias" in err.message):
            return None
        raise


@dataclass(frozen=True)
class Scored:
    """A registered model's answers on the current test rows: probabilities and its labels."""

    probability: np.ndarray
    label: np.ndarray

    def metric(self, y: np.ndarray, positive: str, metric: str, rows: np.ndarray) -> float:
        """`metric` on the test rows `rows` (a boolean mask), with the model's own threshold."""
        y, probs = y[rows], self.probability[rows]
        metrics = binary_metrics(y, probs, 0.5)
        # Threshold metrics use the model's own labels, so each model keeps its own threshold.
        labelled = binary_metrics(y, (self.label[rows] == positive).astype(np.float64), 0.5)
        for key in ("accuracy", "f1", "precision", "recall", "balanced_accuracy", "mcc"):
            metrics[key] = labelled[key]
        return float(metrics[metric])


def score(model_dir: str | Path, frame: pd.DataFrame) -> Scored:
    """Answers of a downloaded pyfunc on raw rows, with its own preprocessing and threshold."""
    out = mlflow.pyfunc.load_model(str(model_dir)).predict(frame)
    return Scored(out["probability"].to_numpy(dtype=np.float64), out["label"].to_numpy())


def download(name: str, version: str, into: Path) -> Path:
    """A version's model folder, fetched once (its pyfunc and its learned-from record)."""
    # By number, not alias: the decision names exactly the version that was scored.
    return Path(mlflow.artifacts.download_artifacts(f"models:/{name}/{version}",
                                                    dst_path=str(into)))


def learned_from(model_dir: Path) -> set[str] | None:
    """Fingerprints a version learned from; None if registered before versions kept them."""
    path = model_dir / "artifacts" / fingerprints.LEARNED_FILE
    return fingerprints.read_learned(path) if path.is_file() else None


@dataclass(frozen=True)
class Decision:
    """Outcome of the quality gate for one challenger."""

    promote: bool
    reason: str
    metric: str
    challenger_score: float | None
    champion_score: float | None
    champion_version: str | None
    compared_rows: int | None = None
    """Current test rows both models were scored on: neither learned from them."""
    excluded_rows: int | None = None
    """Current test rows left out because the challenger or the champion learned from them."""
    overlap: str = "none"
    """What was known of the champion's training rows: known, unknown (no record), none."""


@dataclass(frozen=True)
class Comparison:
    """The test rows a gate compares on, and why the others were left out."""

    rows: np.ndarray
    """Boolean mask over the current test rows."""
    overlap: str
    challenger_seen: int
    champion_seen: int | None

    @property
    def excluded(self) -> int:
        """Rows left out."""
        return int((~self.rows).sum())

    def describe(self) -> str:
        """One clause for the decision's reason."""
        seen = ("the champion's training rows are unknown (registered without a record), so "
                "its overlap with them is unknown" if self.champion_seen is None
                else f"{self.champion_seen} the champion learned from")
        new = ("neither model learned from" if self.champion_seen is not None
               else "the challenger did not learn from")
        return (f"compared on {int(self.rows.sum())} test rows {new}; "
                f"{self.excluded} excluded ({self.challenger_seen} the challenger learned "
                f"from, {seen})")


def comparison(test: list[str], challenger: set[str], champion: set[str] | None) -> Comparison:
    """Test rows (fingerprints) that neither the challenger nor the champion learned from."""
    mine = np.array([f in challenger for f in test], dtype=bool)
    if champion is None:
        return Comparison(~mine, "unknown", int(mine.sum()), None)
    theirs = np.array([f in champion for f in test], dtype=bool)
    return Comparison(~(mine | theirs), "known", int(mine.sum()), int(theirs.sum()))


def decide(cfg: RegisterConfig, challenger_score: float | None, champion_score: float | None,
           champion_version: str | None, champion_error: str | None = None,
           compared: Comparison | None = None) -> Decision:
    """Promote on no champion, a champion that cannot score, or the margin on fair rows."""
    # Too few rows neither model learned from (compared.rows) keep the champion, saying why.
    metric = cfg.metric
    counts = {} if compared is None else {"compared_rows": int(compared.rows.sum()),
                                          "excluded_rows": compared.excluded,
                                          "overlap": compared.overlap}
    if champion_version is None:
        return Decision(True, "first version: no champion yet", metric, challenger_score, None,
                        None, **counts)
    if champion_score is None and champion_error is not None:
        return Decision(True, f"champion v{champion_version} cannot score the current test "
                        f"split ({champion_error})", metric, challenger_score, None,
                        champion_version, **counts)
    where = "" if compared is None else f"; {compared.describe()}"
    if challenger_score is None or champion_score is None:
        assert compared is not None
        return Decision(False, f"kept champion v{champion_version}: too few test rows to "
                        f"compare fairly (register.min_gate_rows = {cfg.min_gate_rows}, and both "
                        f"classes needed){where}", metric, None, None, champion_version, **counts)
    gain = improvement(metric, challenger_score, champion_score)
    better = "lower" if direction(metric) == "minimize" else "higher"
    verdict = (f"test {metric} {challenger_score:.6f} vs champion v{champion_version} "
               f"{champion_score:.6f} ({better} is better): improvement {gain:+.6f}")
    if gain >= cfg.min_improvement and gain > 0:
        return Decision(True, f"{verdict} >= min_improvement {cfg.min_improvement}{where}",
                        metric, challenger_score, champion_score, champion_version, **counts)
    return Decision(False, f"{verdict} < required {cfg.min_improvement:g} (and must be > 0)"
                    f"{where}", metric, challenger_score, champion_score, champion_version,
                    **counts)


def enough(compared: Comparison, y: np.ndarray, minimum: int) -> bool:
    """At least `minimum` rows to compare on, holding both classes (ranking metrics need both)."""
    kept = y[compared.rows]
    return len(kept) >= minimum and 0 < kept.sum() < len(kept)


def gate(client: MlflowClient, cfg: RegisterConfig, challenger: Scored, learned: set[str],
         test: Split, test_fingerprints: list[str], frame: pd.DataFrame, positive: str,
         scratch: Path) -> Decision:
    """Score both models on today's test rows neither learned from and decide (under the lock)."""
    current = aliased(client, cfg.model_name)
    if current is None:
        return decide(cfg, challenger.metric(test.y, positive, cfg.metric,
                                             np.ones(len(test.y), dtype=bool)), None, None)
    try:
        folder = download(cfg.model_name, str(current.version), scratch / "champion")
        compared = comparison(test_fingerprints, learned, learned_from(folder))
        if not enough(compared, test.y, cfg.min_gate_rows):
            return decide(cfg, None, None, str(current.version), compared=compared)
        best = score(folder, frame).metric(test.y, positive, cfg.metric, compared.rows)
    # An old champion whose artifacts are gone (OSError, MlflowException) or whose contract no
    # longer fits today's data (PipelineError: other columns, image geometry) cannot compete.
    except (MlflowException, PipelineError, OSError) as err:
        return decide(cfg, challenger.metric(test.y, positive, cfg.metric,
                                             np.ones(len(test.y), dtype=bool)), None,
                      str(current.version), f"{type(err).__name__}: {str(err)[:300]}")
    mine = challenger.metric(test.y, positive, cfg.metric, compared.rows)
    return decide(cfg, mine, best, str(current.version), compared=compared)
