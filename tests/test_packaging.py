"""What a logged model ships (its code, its pinned requirements) and the environment lock."""

from __future__ import annotations

import csv
import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.core import lineage
from pipeline.core.config import BACKBONES
from pipeline.registry import packaging
from tests.helpers import REPO, make_imagefolder, run_stages, write_params

# The default image model. A backbone's runtime imports are the slow test's (a fresh venv
# from its requirements): torchvision alone takes seconds to import.
KINDS = ("cnn",)

# Runs in a fresh interpreter with only the shipped copy of `pipeline` first on sys.path: the
# imports our modules make (recorded by importer) while the pyfunc module is imported, then
# while each kind of model is loaded and predicts, and which distributions own each import.
STANDALONE = r"""
import builtins, json, sys
from pathlib import Path

code, work, kinds = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]
sys.path.insert(0, code)
record = {}
real_import = builtins.__import__

def spy(name, globals=None, locals=None, fromlist=(), level=0):
    importer = (globals or {}).get("__name__") or ""
    if record is not None and level == 0 and importer.split(".")[0] == "pipeline":
        record.setdefault(name.split(".")[0], set()).add(importer)
    return real_import(name, globals, locals, fromlist, level)

builtins.__import__ = spy
import pipeline.registry.pyfunc_model
imports = {"module": record}
record = None  # building the test models is not what serving runs

import dataclasses
import numpy as np, pandas as pd
from mlflow.pyfunc import PythonModelContext
from pipeline.core.config import ModelConfig, TrainConfig
from pipeline.data.dataset import DatasetMeta, ImageSpec
from pipeline.models.networks import CONFIG_FILE, WEIGHTS_FILE, build_model, save_model
from pipeline.registry.serving import RawInputClassifier

meta = DatasetMeta("imagefolder", str(work), ("cat", "dog"), image=ImageSpec(32, 1, (0.3,), (0.2,)))
(work / "meta.json").write_text(json.dumps(meta.to_json()))
(work / "serving.json").write_text(json.dumps({"threshold": 0.5, "classes": ["cat", "dog"]}))
frame = pd.DataFrame({"pixels": [np.random.default_rng(i).integers(0, 256, (32, 32))
                                 for i in range(3)]})
probability = {}
for kind in kinds:
    cfg = ModelConfig(type=kind, conv_channels=(4, 8))
    save_model(build_model(cfg, (1, 32, 32), (0.3,), (0.2,)), work / kind, {
        "model": dataclasses.asdict(cfg), "train": dataclasses.asdict(TrainConfig()),
        "input_shape": [1, 32, 32],
        "norm": {"mean": [0.3], "std": [0.2]}})
    record = imports[kind] = {}
    model = RawInputClassifier()
    model.load_context(PythonModelContext({
        "weights": str(work / kind / WEIGHTS_FILE), "model_config": str(work / kind / CONFIG_FILE),
        "meta": str(work / "meta.json"), "serving": str(work / "serving.json")}, None))
    probability[kind] = model.predict(None, frame)["probability"].tolist()
    record = None

tops = {top for found in imports.values() for top in found if top in sys.modules}
files = {top: Path(sys.modules[top].__file__).resolve() for top in tops
         if getattr(sys.modules[top], "__file__", None)}
# Owners from the installers' own records (each *.dist-info/RECORD beside the package).
records = {}
owners = {top: [] for top in tops}
for top, file in files.items():
    site = file.parents[1] if file.name == "__init__.py" else file.parent
    for record in site.glob("*.dist-info/RECORD"):
        text = records.setdefault(record, "\n" + record.read_text())
        if f"\n{file.relative_to(site).as_posix()}," in text:
            owners[top].append(record.parent.name.split("-")[0])
(work / "out.json").write_text(json.dumps({
    "imports": {k: {t: sorted(v) for t, v in found.items()} for k, found in imports.items()},
    "owners": owners, "probability": probability,
    "modules": {n: m.__file__ for n, m in sys.modules.items() if n.split(".")[0] == "pipeline"},
    "packages": sorted({n.split(".")[0] for n in sys.modules})}))
"""


def clean_env() -> dict[str, str]:
    """This environment without PYTHONPATH: a child finds only what the test puts first."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


@pytest.fixture(scope="module")
def standalone(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The shipped code, imported, loaded and predicting in a fresh interpreter (STANDALONE)."""
    root = tmp_path_factory.mktemp("standalone")
    code = packaging.model_code(root / "code")
    (root / "work").mkdir()
    run = subprocess.run([sys.executable, "-c", STANDALONE, str(code.parent), str(root / "work"),
                          *KINDS], cwd=root, env=clean_env(), capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-4000:]
    return {"code": code, **json.loads((root / "work" / "out.json").read_text())}


@pytest.mark.slow  # a fresh interpreter
def test_shipped_code_is_exactly_what_the_pyfunc_loads(standalone: dict) -> None:
    code: Path = standalone["code"]
    shipped = packaging.shipped_modules()
    # Every module the pyfunc ran came from the shipped copy, and nothing shipped went unused.
    assert sorted(standalone["modules"]) == shipped
    assert all(Path(f).is_relative_to(code) for f in standalone["modules"].values())
    copied = sorted(p.relative_to(code.parent).with_suffix("").as_posix().replace("/", ".")
                    .removesuffix(".__init__") for p in code.rglob("*.py"))
    assert copied == shipped
    assert {"pipeline", "pipeline.core.cpu", "pipeline.registry.pyfunc_model",
            "pipeline.registry.serving", "pipeline.registry.features",
            "pipeline.registry.signature", "pipeline.models.backbones"} <= set(shipped)
    assert not {"pipeline.tracking.runs", "pipeline.registry.register",
                "pipeline.registry.examples", "pipeline.tuning.tune"} & set(shipped)


@pytest.mark.slow  # a fresh interpreter
def test_the_pyfunc_runs_no_training_loop_and_no_scikit_learn(standalone: dict) -> None:
    # What serves is saved preprocessing + a network: neither the code nor the process that
    # loaded the pyfunc and predicted holds the training loop, the metrics or their imports.
    for modules in (packaging.shipped_modules(), sorted(standalone["modules"])):
        assert not [m for m in modules if m.split(".")[1:2] in (
            ["training"], ["evaluation"], ["tuning"], ["tracking"])], modules
    assert "mlflow" in standalone["packages"]  # (which imports scipy when it is installed)
    assert not {"sklearn", "optuna", "dvc"} & set(standalone["packages"])


@pytest.mark.slow  # a fresh interpreter
def test_shipped_code_predicts_standalone(standalone: dict) -> None:
    for kind in KINDS:
        probs = standalone["probability"][kind]
        assert len(probs) == 3 and all(0.0 <= p <= 1.0 for p in probs), kind


@pytest.mark.slow  # a fresh interpreter
@pytest.mark.parametrize("kind", KINDS)
def test_requirements_pin_what_the_shipped_code_imports(standalone: dict, kind: str) -> None:
    # Independent of packaging's reading of the source: what our modules imported at run time
    # (the pyfunc module, then loading and predicting this kind) and which installed
    # distributions hold those files.
    found = {**standalone["imports"]["module"], **standalone["imports"][kind]}
    imported = {top for top in found if top not in sys.stdlib_module_names} - {"pipeline"}
    owners = {top: {lineage.canonical(d) for d in standalone["owners"][top]}
              for top in imported}
    assert all(owners.values()), f"imported, but no distribution owns it: {owners}"
    pins = dict(line.split("==") for line in packaging.model_requirements(kind))
    for top in imported:  # each imported package pinned exactly once...
        assert len(owners[top] & set(pins)) == 1, (top, owners[top], sorted(pins))
    for name, version in pins.items():  # ...and nothing pinned that nothing imports
        assert any(name in o for o in owners.values()), name
        assert version == importlib.metadata.version(name).split("+")[0], name
    assert ("torchvision" in pins) == (kind in BACKBONES)


def test_closure_follows_lazy_imports_and_skips_type_checking(tmp_path: Path) -> None:
    package = tmp_path / "pipeline"
    package.mkdir()
    (package / "__init__.py").write_text("from pipeline.b import x\n")
    (package / "a.py").write_text(
        "from typing import TYPE_CHECKING\nimport numpy.linalg\nfrom . import b\n"
        "if TYPE_CHECKING:\n    from pipeline import c\n    import pandas\n"
        "def f():\n    import psutil\n    from pipeline.d import y\n")
    for name in ("b", "c", "d"):
        (package / f"{name}.py").write_text("import os\nx = y = 1\n")
    assert packaging.shipped_modules("pipeline.a", package) == [
        "pipeline", "pipeline.a", "pipeline.b", "pipeline.d"]
    found = packaging.module_imports("pipeline.a", package)
    assert (found.eager, found.lazy) == ({"numpy"}, {"psutil"})
    assert found.ours == {"pipeline", "pipeline.b", "pipeline.d"}


def test_model_code_is_a_new_folder(tmp_path: Path) -> None:
    packaging.model_code(tmp_path)
    with pytest.raises(FileExistsError):  # a leftover module would ship with the model
        packaging.model_code(tmp_path)


def test_lazy_imports_are_pinned_only_when_asked() -> None:
    backbones = [packaging.BACKBONES_MODULE]
    assert not any(r.startswith("torchvision==") for r in packaging.pinned_requirements(backbones))
    assert any(r.startswith("torchvision==") for r in
               packaging.pinned_requirements(backbones, lazy_from=backbones))
    # mlflow's files come in three distributions: pinned is the one that brings the others.
    providers = importlib.metadata.packages_distributions()
    assert packaging.distribution_of("mlflow", providers) == "mlflow"


def test_lock_lines_pin_everything_but_the_project() -> None:
    def item(name: str, version: str) -> dict:
        return {"metadata": {"name": name, "version": version}}

    report = {"pip_version": "24.0", "environment": {
        "python_full_version": "3.11.7", "sys_platform": "linux", "platform_machine": "x86_64"},
        "install": [item("PyYAML", "6.0.4"), item("pipeline", "0.1.0"), item("torch", "2.14.1"),
                    item("nvidia-cublas", "13.1"), item("triton", "3.8.0")]}
    lines = packaging.lock_lines(report)
    assert all(line.startswith("#") for line in lines[:2]) and "linux x86_64" in lines[0]
    marker = ' ; sys_platform == "linux" and platform_machine == "x86_64"'
    assert lines[2:] == [f"nvidia-cublas==13.1{marker}", "pyyaml==6.0.4", "torch==2.14.1",
                         f"triton==3.8.0{marker}"]


def test_lock_state_names_the_lock_and_what_differs(tmp_path: Path) -> None:
    assert lineage.lock_state(tmp_path / "none.lock") == "none"
    lock = tmp_path / "requirements.lock"
    lock.write_text("# header\n" + "".join(f"{k}=={v}\n" for k, v in lineage.installed().items()))
    sha = hashlib.sha256(lock.read_bytes()).hexdigest()
    assert lineage.lock_state(lock) == sha
    lock.write_text(lock.read_text().replace(f"torch=={lineage.installed()['torch']}",
                                             "torch==1.0.0"))
    state = lineage.lock_state(lock)
    assert state.startswith(hashlib.sha256(lock.read_bytes()).hexdigest())
    assert "1 differ: torch" in state and "(lock: 1.0.0)" in state


def test_this_environment_is_the_locked_one() -> None:
    # A dependency added to pyproject.toml without `make lock` would be installed unpinned.
    assert lineage.installed() == lineage.read_lock()
    assert " differ" not in lineage.lock_state()


def project_predictions(model_uri: str, files: list[Path], out: Path
                        ) -> tuple[list[tuple[float, str]], list[tuple[str, str]]]:
    """`pipeline.cli.predict` in this process: its answers in float64 (the pyfunc on the frame it
    builds), and the CSV it writes (9 decimals), as (probability, label) per file."""
    import mlflow

    from pipeline.cli import predict as predict_cli
    from pipeline.registry.batch import image_frame

    predict_cli.main(["--model", model_uri, "--input", *map(str, files), "--output", str(out)])
    with out.open() as f:
        written = [(row["probability"], row["label"]) for row in csv.DictReader(f)]
    model = mlflow.pyfunc.load_model(model_uri)
    image = model.metadata.metadata["pipeline"]["image"]
    frame, _, _ = image_frame(files, image["size"], image["channels"], skip_bad=False)
    answers = model.predict(frame)
    probability, label = answers["probability"].tolist(), answers["label"].tolist()
    return list(zip(probability, label, strict=True)), written


# Runs in the fresh venv: load the downloaded model folder, score the files like the CLI.
VENV_SCORE = r"""
import json, sys
from pathlib import Path
import mlflow.pyfunc, pandas as pd, torch

model_dir, files, threads, out = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
model = mlflow.pyfunc.load_model(model_dir)
torch.set_num_threads(threads)  # as the test process: CPU float reductions depend on it
pred = model.predict(pd.DataFrame({"image": [Path(f).read_bytes() for f in files]}))
import pipeline
Path(out).write_text(json.dumps({"rows": list(zip(pred["probability"].tolist(),
                                                   pred["label"].tolist())),
                                 "pipeline": pipeline.__file__}))
"""


@pytest.mark.slow
def test_registered_model_scores_identically_in_a_fresh_venv(tmp_path: Path,
                                                             mlflow_uri: str) -> None:
    import mlflow
    import torch

    from pipeline.stages import register
    from tests.helpers import register_args

    started = time.monotonic()
    images = make_imagefolder(tmp_path / "images", per_class=8)
    files = sorted(images.rglob("*.*"))
    models = {}
    for kind, size in (("cnn", 8), ("resnet18", 32)):
        params = write_params(tmp_path / f"{kind}.yaml", {
            "data": {"source": "imagefolder", "path": str(images), "positive_class": "dog",
                     "image_size": size, "split": {"train": 0.5, "val": 0.25, "test": 0.25}},
            "model": {"type": kind}, "train": {"epochs": 1},
            "register": {"model_name": f"portable-{kind}"}})
        paths = run_stages(params, tmp_path / kind)
        register.main(register_args(params, paths, tmp_path / kind / "registration.json"))
        mlflow.set_tracking_uri(mlflow_uri)
        uri = f"models:/portable-{kind}/1"
        local = Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(tmp_path / kind)))
        models[kind] = local, *project_predictions(uri, files, tmp_path / kind / "out.csv")
    trained = time.monotonic()

    # One venv for both: the backbone's requirements are the CNN's plus torchvision, so
    # installing them second leaves what they alone would, after the CNN ran without it.
    assert set(packaging.model_requirements("cnn")) < set(packaging.model_requirements("resnet18"))
    venv = tmp_path / "venv"
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        python = str(venv / "bin" / "python")
        lock = lineage.read_lock()
        for kind, (local, exact, written) in models.items():
            requirements = local / "requirements.txt"
            assert requirements.read_text().split() == packaging.model_requirements(kind)
            # The model's own requirements; everything they pull in at the locked versions.
            begun = time.monotonic()
            # --no-compile: byte-compiling torch's thousands of modules is most of the wait.
            subprocess.run([python, "-m", "pip", "install", "--quiet", "--no-compile", "-r",
                            str(requirements), "-c", str(REPO / packaging.LOCK_FILE)],
                           check=True, env=clean_env())
            print(f"{kind}: pip install {time.monotonic() - begun:.0f} s")
            frozen = subprocess.run([python, "-m", "pip", "freeze"], check=True, text=True,
                                    capture_output=True, env=clean_env()).stdout.split()
            got = {lineage.canonical(n): v for n, v in (line.split("==") for line in frozen)}
            assert all(lock[name] == version for name, version in got.items()), got
            assert "pipeline" not in got and "dvc" not in got and "optuna" not in got
            assert ("torchvision" in got) == (kind in BACKBONES)  # cnn first: not installed yet
            out = tmp_path / kind / "venv.json"
            subprocess.run([python, "-c", VENV_SCORE, str(local), json.dumps(list(map(str, files))),
                            str(torch.get_num_threads()), str(out)], check=True, cwd=tmp_path,
                           env=clean_env())
            scored = json.loads(out.read_text())
            assert Path(scored["pipeline"]).is_relative_to(local / "code")
            rows = [tuple(row) for row in scored["rows"]]
            assert rows == exact, kind  # float64, bit for bit
            assert [(f"{p:.9f}", label) for p, label in rows] == written, kind
    finally:  # 5-6 GB (torch and its CUDA wheels): not kept among pytest's last temp dirs
        shutil.rmtree(venv, ignore_errors=True)
    print(f"trained + registered {trained - started:.0f} s, venvs + scoring "
          f"{time.monotonic() - trained:.0f} s")
