"""Links from the experiment report to MLflow: run ids come from the outputs, not the store."""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from pipeline.core.services import mask
from pipeline.core.typed import flatten
from pipeline.report.render import Link, Row

# MLflow UI routes (a hash router), as pipeline/tracking/views.py writes them (it imports
# mlflow; this module must not). Without an experiment id the UI's direct run route looks the
# run up.
ML_MODE = "workflowType=machine_learning"  # else MLflow 3 may open its GenAI pages
RUN_ROUTE = "#/experiments/{experiment}/runs/{run}?" + ML_MODE
DIRECT_RUN_ROUTE = "#/runs/{run}?" + ML_MODE
VERSION_ROUTE = "#/models/{name}/versions/{version}"
LOCAL_UI = "http://127.0.0.1:5000"  # where `mlflow ui` serves by default
# pipeline/tracking/runs.py's default (tests/test_report.py keeps the copies equal).
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


def tracking_uri() -> str:
    """The store the runs are looked up in: MLFLOW_TRACKING_URI, else the pipeline's default."""
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def server_url(uri: str) -> str | None:
    """The UI address of an http(s) tracking URI, credentials and query dropped; else None."""
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/") + "/", "", ""))


def ids(record: dict[str, Any], suffix: str) -> dict[str, str]:
    """Every (flattened) key of `record` ending in `suffix`, with its value."""
    return {k: str(v) for k, v in flatten(record).items() if k.endswith(suffix) and v}


def run_link(server: str | None, run_id: str | None, experiment: str | None) -> Any:
    """A link to the run on a server, else its id (None when absent)."""
    if run_id is None or server is None:
        return run_id
    route = (RUN_ROUTE.format(experiment=quote(experiment), run=quote(run_id)) if experiment
             else DIRECT_RUN_ROUTE.format(run=quote(run_id)))
    return Link(run_id, server + route)


def version_link(server: str | None, registration: dict[str, Any]) -> Any:
    """A link to the registered model version on a server, else its name and number."""
    name, version = registration.get("model_name"), registration.get("version")
    if name is None or version is None:
        return None
    text = f"{name} v{version}"
    if server is None:
        return text
    return Link(text, server + VERSION_ROUTE.format(name=quote(str(name), safe=""),
                                                    version=quote(str(version))))


def run_rows(files: dict[str, tuple[dict[str, Any], dict[str, Any]]],
             registrations: tuple[dict[str, Any], dict[str, Any]],
             tracking_uri: str) -> tuple[list[Row], str]:
    """Rows linking the runs and model version the files name; a note on opening them."""
    # `files`: file name → (base, new) contents; every key ending in run_id is a run.
    server = server_url(tracking_uri)
    rows = []
    for name, (old, cur) in files.items():
        old_runs, cur_runs = ids(old, "run_id"), ids(cur, "run_id")
        # An experiment id next to the run id gives the UI's own run address.
        old_exp = next(iter(ids(old, "experiment_id").values()), None)
        cur_exp = next(iter(ids(cur, "experiment_id").values()), None)
        for key in sorted({*old_runs, *cur_runs}):
            a, b = old_runs.get(key), cur_runs.get(key)
            rows.append(Row(f"{key} ({name})", run_link(server, a, old_exp),
                            run_link(server, b, cur_exp), None if a == b else "changed"))
    old_reg, cur_reg = registrations
    if old_reg or cur_reg:
        a, b = version_link(server, old_reg), version_link(server, cur_reg)
        rows.append(Row("model version", a, b, None if a == b else "changed"))
    shown = mask(tracking_uri)
    if server is not None:
        note = f"Runs on the tracking server {server} (MLFLOW_TRACKING_URI)."
    else:
        note = (f"Runs are in {shown} (MLFLOW_TRACKING_URI, or the default): serve it with "
                f"`mlflow ui --backend-store-uri {shown}` from the repository root, then open "
                f"{LOCAL_UI}/{DIRECT_RUN_ROUTE.format(run='<run id>')}.")
    recorded = {r.get("tracking_uri") for r in registrations if r.get("tracking_uri")}
    if recorded - {shown}:
        note += f" registration.json says they were recorded in {', '.join(sorted(recorded))}."
    return rows, note
