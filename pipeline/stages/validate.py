"""DVC stage: params.yaml checked on every change to it, before any other stage runs."""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from pipeline.config import Params
from pipeline.errors import ConfigError
from pipeline.files import write_json
from pipeline.stages._common import stage_main

PATHS = {"dvc_yaml": "dvc.yaml", "out": "reports/params_check.json"}


def run(params: Params, args: argparse.Namespace) -> None:
    """Loading params.yaml validated every key; also refuse data DVC would not track."""
    deps = yaml.safe_load(Path(args.dvc_yaml).read_text())["stages"]["preprocess"]["deps"]
    # Data folders only: not code, not the ordering file this stage writes itself.
    folders = [Path(d) for d in deps if not d.startswith(("pipeline/", "reports/"))]
    path = Path(params.data.path)
    if path.is_absolute() or ".." in path.parts or not any(
            path == f or f in path.parents for f in folders):
        raise ConfigError(f"data.path = {params.data.path!r}: not inside the preprocess stage's "
                          f"DVC dependencies ({', '.join(map(str, folders))}), so DVC would not "
                          "see it change; put the data under data/raw/ (or add its folder to "
                          "the preprocess deps in dvc.yaml)")
    # Constant content: downstream stages depend on this file only for ordering.
    write_json(args.out, {"params": "valid"})


main = stage_main(__doc__, PATHS, run)

if __name__ == "__main__":
    main()
