"""DVC stage: params.yaml checked on every change to it, before any other stage runs."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pipeline.core.config import Params
from pipeline.core.errors import ConfigError
from pipeline.core.files import write_json
from pipeline.core.yamlfile import read_yaml
from pipeline.stages._common import stage_main

PATHS = {"dvc_yaml": "dvc.yaml", "out": "reports/params_check.json"}


def run(params: Params, args: argparse.Namespace) -> None:
    """Loading params.yaml validated every key; also refuse data DVC would not track."""
    check_params(params, args.dvc_yaml)
    # Constant content: downstream stages depend on this file only for ordering.
    write_json(args.out, {"params": "valid"})


def pipeline_file() -> Path:
    """dvc.yaml of the checkout in the working directory, else of the code's own checkout."""
    here = Path("dvc.yaml")
    return here if here.is_file() else Path(__file__).resolve().parents[2] / "dvc.yaml"


def check_params(params: Params, dvc_yaml: str | Path = "dvc.yaml") -> None:
    """What validate checks beyond load_params (tune_worker runs the same): the data and
    checkpoint paths lie where DVC tracks them, and the checkpoint exists."""
    stages = read_yaml(dvc_yaml, "DVC pipeline file (run from the repository root)")
    if not isinstance(stages, dict) or not isinstance(stages.get("stages"), dict):
        raise ConfigError(f"{dvc_yaml}: holds no `stages:` mapping")
    stages = stages["stages"]
    require_tracked("data.path", params.data.path, stages, ("preprocess",))
    if params.model.weights is not None:
        require_tracked("model.weights", params.model.weights, stages, ("tune", "train"))
        if not Path(params.model.weights).is_file():
            raise ConfigError(f"model.weights = {params.model.weights!r}: file not found")


def require_tracked(key: str, value: str, stages: dict[str, Any], names: tuple[str, ...]
                    ) -> None:
    """`value` must lie in a data folder that every stage in `names` depends on in dvc.yaml."""
    # Data folders only: not code, not the ordering file validate writes itself.
    folders = set.intersection(*({Path(d) for d in stages[name]["deps"]
                                  if not d.startswith(("pipeline/", "reports/", "models/"))}
                                 for name in names))
    path = Path(value)
    if path.is_absolute() or ".." in path.parts or not any(
            path == f or f in path.parents for f in folders):
        raise ConfigError(f"{key} = {value!r}: not inside the {' and '.join(names)} stage's "
                          f"DVC dependencies ({', '.join(sorted(map(str, folders)))}), "
                          f"so DVC would not see it change; put it under "
                          f"{'data/raw/' if key == 'data.path' else 'data/weights/'} (or add its "
                          "folder to those stages' deps in dvc.yaml)")


main = stage_main(__doc__, PATHS, run)

if __name__ == "__main__":
    main()
