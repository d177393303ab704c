"""What the team sees, in a real browser: MLflow UI pages and `dvc plots show`, as PNG files.

Run from the repo root:  .venv/bin/python benchmarks/ui_check.py [--out benchmarks/results/ui]

In a fresh temporary copy of the repository (a tiny config: 8x8 digits, 6 trials of 4 epochs),
it runs what a user runs: `dvc repro`, then `dvc exp run -n lr-0.01 -S train.lr=0.01` (a tuned
key: train reproduces the same weights and DVC skips evaluate), then `dvc exp run -n no-tuning
-S tune.enabled=false` (new weights, every stage), then the breast-cancer table (its own
registered model), with `git checkout params.yaml` after each, as the README does. It prints
the `dvc exp show` column counts (all columns vs `make exps`), starts `mlflow server` on a free
loopback port against the copy's SQLite store, and takes headless Chromium screenshots of: the
runs table as a new user opens it and in the pipeline's saved view, the tuning parent run with
its trials, a pipeline run's page, the registered model and a version's description, `dvc plots
show`'s HTML and the experiment report (`python -m pipeline.report`), both opened from file://
with networking off; then it prints `make exps`.

Needs Debian's Chromium (not a CI dependency):  apt-get install -y chromium
The MLflow pages are driven over the DevTools protocol (benchmarks/_devtools.py, stdlib only):
a study's trials show only once its parent row is clicked open, and no URL carries that.
`--workspace DIR` keeps (or reuses) the copy in DIR instead of a temporary folder.
The run times, column counts and PNG names go to benchmarks/results/ui_check.json with the
printed lines, the commit and the machine (benchmarks/_results.py).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from _devtools import DevTools
from _results import captured, write_result
from _workspace import REPO, clean_env, make_repo, run
from mlflow.tracking import MlflowClient

TINY = {"seed": 7, "data": {"image_size": 8}, "augment": {"copies": 1},
        "model": {"type": "cnn", "conv_channels": [4, 8]},
        "train": {"epochs": 4, "patience": 0},
        "tune": {"enabled": True, "n_trials": 6, "pruner": "successive_halving"}}
EXPERIMENTS = [["-n", "lr-0.01", "-S", "train.lr=0.01"],
               ["-n", "no-tuning", "-S", "tune.enabled=false"],
               ["-n", "breast-cancer", "-S", "data.source=breast_cancer", "-S",
                "data.path=data/raw/breast_cancer.csv", "-S", "data.positive_class=malignant",
                "-S", "model.type=mlp"]]


def chromium() -> str:
    """Path of a Chromium binary, or exit with how to install one."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    raise SystemExit("Chromium not found: install Debian's package with\n"
                     "  apt-get install -y chromium\n(it is not needed by the test suite)")


def build(workspace: Path, seconds: dict[str, float]) -> Path:
    """The copy with one `dvc repro` and the experiments done (reused when already there);
    each command's wall time goes into `seconds`."""
    repo = workspace / "repo"
    if (repo / "mlflow.db").exists():
        return repo
    make_repo(repo, TINY, commit=True)
    for cmd in (["dvc", "repro"], *[["dvc", "exp", "run", *e] for e in EXPERIMENTS]):
        start = time.perf_counter()
        run(cmd, repo)
        if cmd[1] == "repro":  # the team's baseline, committed as the README shares results
            run(["git", "add", "-A"], repo)
            run(["git", "commit", "-qm", "baseline results"], repo)
        # As the README does: `dvc exp run -S` leaves its values in params.yaml.
        run(["git", "checkout", "params.yaml"], repo)
        seconds[" ".join(cmd)] = time.perf_counter() - start
        print(f"{' '.join(cmd):55s} {seconds[' '.join(cmd)]:5.0f} s", flush=True)
    return repo


def exp_show_columns(repo: Path) -> dict[str, dict[str, int]]:
    """Columns of `dvc exp show` with everything vs `make exps`, and its '…' cells at 160."""
    counts: dict[str, dict[str, int]] = {}
    make = ["make", "-s", "-f", str(REPO / "Makefile"), "exps", f"VENV={REPO / '.venv'}"]
    for label, cmd in (("dvc exp show", ["dvc", "exp", "show", "--no-pager"]),
                       ("make exps", make)):
        header = next(csv.reader(io.StringIO(run([*cmd, "--csv"] if cmd[0] == "dvc" else
                                                 [*cmd, "ARGS=--csv"], repo))))
        table = subprocess.run(cmd, cwd=repo, env={**clean_env(), "COLUMNS": "160"},
                               capture_output=True, text=True, check=True).stdout
        print(f"{label:13s} {len(header):4d} columns; at 160 characters {table.count('…'):3d} "
              f"cells read '…'; columns: {', '.join(header)[:110]}", flush=True)
        counts[label] = {"columns": len(header), "cut_cells_at_160": table.count("…")}
    return counts


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(repo: Path, port: int) -> subprocess.Popen:
    """`mlflow server` on loopback over the copy's SQLite store; wait until it answers."""
    server = subprocess.Popen(
        ["mlflow", "server", "--backend-store-uri", f"sqlite:///{repo / 'mlflow.db'}",
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        cwd=repo, env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return server
        except OSError:
            time.sleep(1)
    server.kill()
    raise SystemExit("mlflow server did not answer within 120 s")


def screenshot(browser: str, url: str, png: Path, size: str = "1800,1000",
               offline: bool = False) -> None:
    """Headless Chromium screenshot; offline: in a network namespace with no interfaces up."""
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           f"--window-size={size}", "--virtual-time-budget=20000", f"--screenshot={png}", url]
    if offline:
        # No network at all (root may unshare); else no name resolves.
        cmd = (["unshare", "--net", *cmd] if os.geteuid() == 0 and shutil.which("unshare")
               else [*cmd, "--host-resolver-rules=MAP * ~NOTFOUND"])
    # Not captured: Chromium's crash handler outlives it and would hold a pipe open. In our
    # process group headless Chromium hung past any timeout here; in its own it takes seconds.
    subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=300, check=True, start_new_session=True)
    shrink(png)
    print(f"  {png} ({png.stat().st_size // 1024} KiB)", flush=True)


def shrink(png: Path) -> None:
    """256-colour PNG: screenshots of flat UI stay legible at a fifth of the size."""
    from PIL import Image

    with Image.open(png) as img:
        small = img.convert("RGB").quantize(256)
    small.save(png, optimize=True)


def save_view(client: MlflowClient, exp_id: str, key: str, state: dict) -> None:
    """An extra saved view (same envelope as pipeline/tracking/views.py) for one screenshot."""
    now = int(time.time() * 1000)
    client.set_experiment_tag(exp_id, f"mlflow.sharedViewState.{key}", json.dumps(
        {"name": key, "createdAt": now, "updatedAt": now, "state": json.dumps(state)}))


def mlflow_pages(repo: Path, browser: str, out: Path) -> None:
    """Screenshots of the MLflow UI pages the issue names, in one fresh browser profile."""
    from pipeline.core.tags import Tag
    from pipeline.tracking.views import VIEW_KEY, table_view, view_url

    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    exp = client.get_experiment_by_name("binary-classification")
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])
    parent = next(r for r in runs if Tag.STUDY_PARENT in r.data.tags)
    adopted = next(r for r in runs if r.data.tags.get(Tag.DVC_EXP) == "lr-0.01")
    # The pipeline's view narrowed to the study (its parent run and the trials under it).
    save_view(client, exp.experiment_id, "trials", {
        **table_view(), "searchFilter": f"tags.`{Tag.STUDY}` = '{parent.data.tags[Tag.STUDY]}'"})
    text = "document.body.innerText.includes({!r})".format
    rows = "document.querySelectorAll('a[href*=\"/runs/\"]').length >= {}".format
    expand = "document.querySelector('button[data-component-id*=runnamecellrenderer]').click()"
    ml = "workflowType=machine_learning"  # else the UI may show its GenAI sidebar
    pages = [  # file name, URL after the server's address, ready when, then do, ready when
        ("01_experiment_as_first_opened", f"#/experiments/{exp.experiment_id}",
         text("Traces"), None, None),
        ("02_runs_table_pipeline_view", view_url(exp.experiment_id),
         f"{text('test_roc_auc')} && {rows(3)}", None, None),
        ("03_tuning_parent_with_trials", view_url(exp.experiment_id).replace(
            f"={VIEW_KEY}", "=trials"), f"{text('objective')} && {rows(1)}", expand,
         text("pruned@")),
        ("04_run_with_adopted_test_metrics",
         f"#/experiments/{exp.experiment_id}/runs/{adopted.info.run_id}?{ml}",
         text("test_roc_auc"), None, None),
        ("05_registered_model", f"#/models/digits-odd?{ml}", text("Version 1"),
         "[...document.querySelectorAll('h2, h3, span')].find(e => e.innerText === 'Versions')"
         ".scrollIntoView()", "true"),
        ("08_model_version_description", f"#/models/digits-odd/versions/1?{ml}",
         text("Version 1"), None, None)]
    port = free_port()
    server = start_server(repo, port)
    browser_page = DevTools(browser, "1800,1000")
    try:
        for name, url, ready, action, done in pages:
            browser_page.goto(f"http://127.0.0.1:{port}/{url}")
            browser_page.wait(ready, 120)
            # The assistant panel (open by default) hides a third of the table.
            browser_page.js("document.querySelectorAll('button[aria-label=Close]')"
                            ".forEach(b => b.click())")
            if action:
                browser_page.js(action)
                browser_page.wait(done, 60)
            time.sleep(2)  # let the grid lay out its columns
            browser_page.screenshot(out / f"{name}.png")
            shrink(out / f"{name}.png")
            print(f"  {out / name}.png", flush=True)
    finally:
        browser_page.close()
        server.terminate()
        server.wait(timeout=30)


def plots_page(repo: Path, browser: str, out: Path) -> None:
    """`dvc plots show` HTML opened from file:// without any network."""
    run(["dvc", "plots", "show", "-o", "dvc_plots"], repo)
    html = (repo / "dvc_plots" / "index.html").read_text()
    remote = [line.strip() for line in html.splitlines() if "http://" in line or "https://" in line]
    print(f"dvc plots show: {html.count('<img')} images, remote references: {remote or 'none'}")
    screenshot(browser, (repo / "dvc_plots" / "index.html").as_uri(),
               out / "06_dvc_plots_offline.png", size="1100,2600", offline=True)
    # For comparison, what any Vega page of DVC's (the previous dvc.yaml plots) shows offline.
    run(["dvc", "plots", "show", "reports/plots/roc.json", "-x", "fpr", "-y", "tpr", "-o",
         "dvc_plots_vega"], repo)
    screenshot(browser, (repo / "dvc_plots_vega" / "index.html").as_uri(),
               out / "07_vega_page_offline_for_comparison.png", size="900,500", offline=True)


def report_page(repo: Path, browser: str, out: Path) -> None:
    """`python -m pipeline.report` (experiment no-tuning vs HEAD) opened from file:// offline."""
    run(["python", "-m", "pipeline.report", "--base", "HEAD", "--rev", "no-tuning"], repo)
    screenshot(browser, (repo / "reports" / "compare" / "report.html").as_uri(),
               out / "09_experiment_report.png", size="1100,3200", offline=True)


def main() -> None:
    """Build the copy, count columns, take the screenshots."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "ui")
    parser.add_argument("--workspace", type=Path, help="keep or reuse the copy here")
    args = parser.parse_args()
    browser = chromium()
    args.out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    with captured() as out, tempfile.TemporaryDirectory(prefix="ui-check-") as tmp:
        repo = build(args.workspace or Path(tmp), seconds)
        columns = exp_show_columns(repo)
        mlflow_pages(repo, browser, args.out)
        plots_page(repo, browser, args.out)
        report_page(repo, browser, args.out)
        print(run(["make", "-s", "-f", str(REPO / "Makefile"), "exps", f"VENV={REPO / '.venv'}",
                   "ARGS=--csv"], repo), flush=True)
    write_result("ui_check", {"seconds": seconds, "columns": columns, "out": str(args.out),
                              "pngs": sorted(p.name for p in args.out.glob("*.png"))},
                 out.getvalue())


if __name__ == "__main__":
    main()
