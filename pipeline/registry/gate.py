"""The champion/challenger gate: only a model of the task the name serves may compete (its
input contract), which of today's test rows are fair to compare on (neither model learned
from them), both models' scores there, and the decision."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.types.schema import Schema

from pipeline.core import fingerprints
from pipeline.core.config import RegisterConfig
from pipeline.core.errors import PipelineError
from pipeline.core.tags import Tag
from pipeline.data.dataset import Split
from pipeline.evaluation.metrics import binary_metrics, direction, improvement
from pipeline.registry.audit import unseen_by
from pipeline.registry.contract import Contract, ContractError, refusal

log = logging.getLogger(__name__)
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
    model = mlflow.pyfunc.load_model(str(model_dir))
    schema = model.metadata.get_input_schema()
    if schema is not None and schema.has_input_names():
        # Only the columns its signature declares: MLflow would warn about each other one
        # ("extra inputs ... ignored"), which the model ignores anyway; a warning no user can
        # act on. No column in common still reaches the model, which says so.
        names = set(schema.input_names())
        frame = frame[[c for c in frame.columns if c in names]]
    out = model.predict(frame)
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


def schema_contract(kind: str, classes: tuple[str, str], schema: Schema) -> Contract:
    """The contract of a pyfunc whose signature takes `schema` and which answers `classes`."""
    # An image pyfunc's inputs are fixed whatever its signature logged (Contract.of).
    return Contract.of(kind, classes, [(c.name, str(c.to_dict()["type"])) for c in schema.inputs])


def version_contract(name: str, version: ModelVersion) -> Contract | None:
    """A version's contract from its tag, else its logged model; None when neither is readable."""
    if Tag.CONTRACT in version.tags:
        try:
            return Contract.from_tag(version.tags[Tag.CONTRACT])
        except (ValueError, KeyError, IndexError, TypeError):
            pass  # a tag edited by hand: the logged model still says what it takes
    # Registered before versions carried the tag: its logged signature and metadata.
    try:
        info = mlflow.models.get_model_info(f"models:/{name}/{version.version}")
    except (MlflowException, OSError):
        return None  # artifacts gone: the gate finds it cannot score, and says so
    said = (info.metadata or {}).get("pipeline") or {}
    if info.signature is None or "kind" not in said or "classes" not in said:
        return None
    return schema_contract(said["kind"], tuple(said["classes"]), info.signature.inputs)


def served_contract(client: MlflowClient, name: str) -> tuple[Contract, str] | None:
    """The contract `name` serves and where it was read: its champion, else its newest version."""
    champion = aliased(client, name)
    if champion is not None:
        contract = version_contract(name, champion)
        if contract is not None:
            return contract, f"champion v{champion.version}"
    # No champion (yet, or its alias was removed by hand), or one whose contract cannot be
    # read: the newest version that says what it takes speaks for the name.
    unread = set() if champion is None else {str(champion.version)}
    for version in versions_of(client, name):
        if str(version.version) in unread:
            continue
        contract = version_contract(name, version)
        if contract is not None:
            why = ("no champion" if champion is None else
                   f"champion v{champion.version}'s contract cannot be read")
            newest = " readable" if unread else ""
            return contract, f"v{version.version}, its newest{newest} version ({why})"
        unread.add(str(version.version))
    return None


def versions_of(client: MlflowClient, name: str) -> list[ModelVersion]:
    """The registered versions of `name`, newest first."""
    return sorted(client.search_model_versions(f"name = '{name}'"),
                  key=lambda v: int(v.version), reverse=True)


def free_name(client: MlflowClient, mine: Contract, auto_name: str, taken: str) -> str:
    """The auto name if free or serving `mine`, else the auto name with the contract's hash."""
    if auto_name != taken:
        held = served_contract(client, auto_name)
        if held is None or held[0].matches(mine):
            return auto_name
    return f"{auto_name}-{mine.fingerprint()}"


def check_contract(client: MlflowClient, name: str, mine: Contract, auto_name: str, *,
                   warn: bool = True) -> None:
    """Refuse (ContractError) a model of another task than the one `name` serves."""
    served = served_contract(client, name)
    versions = [] if served is not None or not warn else versions_of(client, name)
    if versions:
        log.warning("registered model %r: none of its %d versions (newest v%s) has an input "
                    "contract that can be read (no readable %s tag, and its logged model is "
                    "gone or has no signature), so this model is registered there without "
                    "checking it is the same prediction task; if it takes other inputs or "
                    "labels, set register.model_name to a name of its own", name, len(versions),
                    versions[0].version, Tag.CONTRACT)
    if served is not None and not served[0].matches(mine):
        raise ContractError(refusal(name, served[0], served[1], mine,
                                    free_name(client, mine, auto_name, name), auto_name))


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
        return (f"compared on {int(self.rows.sum())} test rows "
                f"{unseen_by(self.champion_seen is not None)}; "
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
