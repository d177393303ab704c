"""What the team sees in MLflow: the pipeline run's name and link, a saved runs-table view with
the metrics that matter (and the tags that link a run to the run that trained its weights and
name its data), and test metrics copied into a rerun whose weights DVC found unchanged."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator

from mlflow.tracking import MlflowClient

from pipeline.core.lineage import pipeline_run_name
from pipeline.core.services import is_http, mask
from pipeline.core.tags import Tag
from pipeline.data.dataset import DatasetMeta
from pipeline.tracking import metric_log, runs
from pipeline.tracking.metric_log import Background
from pipeline.tracking.sqlite_store import sqlite_file
from pipeline.tracking.store import experiment_id, tracking_uri

log = logging.getLogger(__name__)

# MLflow's UI (3.x) lists experiment tags Tag.SHARED_VIEW + <key> under "Views" and opens one
# with `?viewStateShareKey=<key>`; its runs table otherwise shows no metric column by default.
VIEW_KEY = "pipeline"
# Without it a 3.x UI may open the experiment as a GenAI one (traces) instead of its runs.
EXPERIMENT_KIND = "custom_model_development"
# Test metrics of pipeline runs (and the register gate's default), a trial's validation score.
COLUMNS = ("test_roc_auc", "test_log_loss", "test_accuracy", "test_f1", "objective")
# Every link into the UI carries it: without it MLflow 3 may open its GenAI pages (traces).
ML_MODE = "workflowType=machine_learning"
# Where `mlflow ui` serves by default.
LOCAL_UI = "http://127.0.0.1:5000"


def view_url(experiment_id: str) -> str:
    """Path (after the server's address) that opens the runs table in the pipeline's view."""
    return f"#/experiments/{experiment_id}/runs?{ML_MODE}&viewStateShareKey={VIEW_KEY}"


def run_url(experiment_id: str, run_id: str) -> str:
    """Path (after the server's address) of a run's page."""
    return f"#/experiments/{experiment_id}/runs/{run_id}?{ML_MODE}"


def run_link(experiment_id: str, run_id: str) -> str:
    """Where to open a run: its page on the server, or how to serve this store and the page."""
    uri, page = tracking_uri(), run_url(experiment_id, run_id)
    if is_http(uri):
        return f"{mask(uri).rstrip('/')}/{page}"
    db = sqlite_file(uri)  # absolute: the command works from any folder
    if db is None:  # a database URL: its password is masked here, so no runnable command
        return f"{page} in an MLflow UI over {mask(uri)}"
    return f"`mlflow ui --backend-store-uri sqlite:///{db.resolve()}`, then {LOCAL_UI}/{page}"


def table_view(metric: str = "roc_auc") -> dict:
    """The runs-table state MLflow's UI saves for a view; a study parent shows best_val_metric."""
    tags = [f"tags.`{t}`" for t in (Tag.DVC_EXP, Tag.STAGE, Tag.DATA_SOURCE, Tag.TRAINED_BY,
                                    Tag.PRUNED_AT, Tag.PRUNED_STEP, Tag.TEST_METRICS_FROM)]
    metrics = [*COLUMNS, f"best_val_{metric}"]
    columns = [f"metrics.`{m}`" for m in metrics] + tags + [
        "params.`model.type`", "params.`train.lr`"]
    return {"selectedColumns": columns, "orderByKey": "attributes.start_time",
            "orderByAsc": False}


def share_table_view(experiment_id: str, metric: str) -> None:
    """Save the pipeline's view in the experiment once (a teammate's edits to it are kept)."""
    client = MlflowClient()
    tags = client.get_experiment(experiment_id).tags
    now = int(time.time() * 1000)
    if Tag.SHARED_VIEW + VIEW_KEY not in tags:
        envelope = {"name": "Pipeline: test metrics", "createdAt": now, "updatedAt": now,
                    "state": json.dumps(table_view(metric))}
        client.set_experiment_tag(experiment_id, Tag.SHARED_VIEW + VIEW_KEY, json.dumps(envelope))
    if Tag.EXPERIMENT_KIND not in tags:
        client.set_experiment_tag(experiment_id, Tag.EXPERIMENT_KIND, EXPERIMENT_KIND)
    if Tag.NOTE not in tags:  # never overwrite a description someone wrote
        client.set_experiment_tag(experiment_id, Tag.NOTE, (
            "Runs of the DVC pipeline, each named after its `dvc exp run` experiment (tag "
            f"`{Tag.DVC_EXP}`) or `repro@<commit>`; Optuna trials nest under their study's "
            f"run. Test metrics as columns: **Views → Pipeline: test metrics**, or "
            f"[open that view]({view_url(experiment_id)})."))


@contextlib.contextmanager
def pipeline_run(experiment: str, stage: str, meta: DatasetMeta,
                 metric: str) -> Iterator[runs.RunRef]:
    """Start the pipeline's run, named and tagged after its experiment and data; log its link.
    MLflow's active run is left alone: what the stage records names this run."""
    tags = {**runs.run_tags(stage), Tag.DATA_SOURCE: runs.data_source(meta)}
    exp_id, name = experiment_id(experiment), pipeline_run_name()
    with runs.start_run(exp_id, run_name=name, tags=tags, fluent=False) as run_id:
        view = Background()  # while the stage works: it changes nothing the stage reads
        view.submit(share_table_view, exp_id, metric)
        log.info("%s: MLflow run %s (%s): %s", stage, name, run_id, run_link(exp_id, run_id))
        yield runs.RunRef(exp_id, run_id)
        view.close()


def adopt_test_metrics(run_id: str, experiment_id: str, model_sha: str,
                       processed: str) -> str | None:
    """Copy test metrics from the latest earlier run of the same weights and test data."""
    # DVC skips evaluate when train reproduces its weights byte for byte (a tuned key changed,
    # a rerun): without this the new run, the one named after the experiment, would have none.
    for earlier in runs.find_runs(experiment_id, {Tag.MODEL_SHA: model_sha,
                                                  Tag.PROCESSED: processed}, limit=50):
        test = {k: v for k, v in earlier.data.metrics.items() if k.startswith("test_")}
        if earlier.info.run_id == run_id or not test:
            continue
        metric_log.log_metrics(test, run_id)
        source = earlier.data.tags.get(Tag.TEST_METRICS_FROM, earlier.info.run_id)
        metric_log.log_tags({Tag.TEST_METRICS_FROM: source,
                             Tag.THRESHOLD_RULE: earlier.data.tags.get(Tag.THRESHOLD_RULE, "")},
                            run_id)
        return source
    return None
