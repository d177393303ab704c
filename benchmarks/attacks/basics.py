"""The first attack cases: params, CSV cells, unreadable images, stores, the predict CLI."""

from __future__ import annotations

from attacks.common import (
    Case,
    bomb,
    csv_case,
    garbage_store,
    image_case,
    predict_csv,
    set_cells,
    train_with_store,
    validate,
)

CASES = [
    Case("params: unknown top-level key", validate("sede: 1\n"), "sede: unknown key"),
    Case("params: typo'd section", validate("trian: {lr: 0.1}\n"), "trian: unknown key"),
    Case("params: empty file", validate("# nothing\n"), "params file is empty"),
    Case("params: lr .inf", validate("train: {lr: .inf}\n"), "train.lr = inf: must be a finite"),
    Case("params: search range outside key range",
         validate({"tune": {"search_space": {"model.dropout": {"low": 0.1, "high": 2}}}}),
         "tune.search_space.model.dropout.high"),
    Case("params: renamed key", validate({"model": {"channels": [8]}}), "renamed to"),
    Case("params: empty experiment", validate({"mlflow": {"experiment": ""}}),
         "mlflow.experiment = ''"),
    Case("params: data.path outside data/raw", validate({"data": {"path": "/tmp/x"}}),
         "data.path = '/tmp/x': not inside"),
    Case("csv: duplicate target header",
         csv_case(lambda t: t.replace("label\n", "label,label\n", 1).replace("m\n", "m,m\n")),
         "column 'label' appears more than once"),
    Case("csv: inf value", csv_case(lambda t: set_cells(t, 0, "inf", range(1))),
         "column 'x1' row 0 holds inf"),
    Case("csv: 1e999", csv_case(lambda t: set_cells(t, 1, "1e999", range(1, 2))),
         "column 'x2' row 1 holds inf"),
    Case("csv: values overflow std", csv_case(lambda t: set_cells(t, 1, "1e300")),
         "too large to standardise"),
    Case("csv: all-missing column", csv_case(lambda t: set_cells(t, 1, "")),
         "column 'x2' has no values"),
    Case("csv: not UTF-8", csv_case(lambda t: t.replace("red", "r\xe9d")), "not UTF-8 text"),
    Case("csv: unclosed quote", csv_case(lambda t: t.replace("red", '"red', 1)),
         "cannot parse CSV"),
    Case("image: truncated PNG", image_case(lambda f: (f / "dog" / "0.png").write_bytes(
        (f / "dog" / "1.png").read_bytes()[:30])), "0.png: not a readable image"),
    Case("image: text file", image_case(lambda f: (f / "cat" / "x.png").write_text("hello")),
         "x.png: not a readable image (unknown or unsupported format)"),
    Case("image: decompression bomb", image_case(bomb), "refused as a decompression bomb"),
    Case("store: corrupt mlflow.db", garbage_store, "tracking store failed", env={
        "MLFLOW_TRACKING_URI": "sqlite:///{root}/mlflow.db"}),
    Case("store: SQLite folder missing", train_with_store, "does not exist", env={
        "MLFLOW_TRACKING_URI": "sqlite:///{root}/nowhere/mlflow.db"}),
    Case("predict: missing CSV", predict_csv(None), "in.csv: no such file or folder"),
    Case("predict: mlflow.db missing (not created empty)", predict_csv(b"x1\n1\n"),
         "there is no tracking store at", output="gone.db",
         env={"MLFLOW_TRACKING_URI": "sqlite:///{root}/gone.db"}),
]
