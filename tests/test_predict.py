"""The predict CLI answers --help and argument errors without loading MLflow, torch or pandas."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("mlflow", "torch", "pandas", "sklearn")


@pytest.mark.parametrize("argv", [["--help"], ["--output", "x.csv"],
                                  ["--input", "no/such/folder", "--output", "x.csv"]])
def test_help_and_argument_errors_import_nothing_heavy(argv: list[str], tmp_path) -> None:
    # Imports, not seconds: a timing threshold would pass or fail with the machine's load.
    code = ("import sys\nfrom pipeline.cli import predict\ntry:\n"
            f"    predict.main({argv!r})\nexcept SystemExit as e:\n    code = e.code\n"
            f"print(code, sorted(m for m in {HEAVY!r} if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    exit_code, loaded = proc.stdout.strip().splitlines()[-1].split(" ", 1)
    assert loaded == "[]", proc.stdout + proc.stderr
    assert exit_code == ("0" if argv == ["--help"] else "2")
    if len(argv) == 4:
        assert "--input no/such/folder: no such file or folder" in proc.stderr


def test_default_model_is_the_champion_of_the_name_register_resolves(tmp_path) -> None:
    from pipeline.cli.predict import default_model_uri
    from pipeline.core.errors import DataError

    params = tmp_path / "params.yaml"
    assert default_model_uri(str(tmp_path / "none.yaml")) == "models:/digits-odd@champion"
    params.write_text("data: {source: csv, path: data/raw/loans.csv, positive_class: bad}\n")
    assert default_model_uri(str(params)) == "models:/loans-bad@champion"
    params.write_text("register: {model_name: fraud}\n")
    assert default_model_uri(str(params)) == "models:/fraud@champion"
    # No positive class in params: preprocess's metadata says which, as register reads it.
    params.write_text("data: {source: csv, path: data/raw/loans.csv, positive_class: null}\n")
    meta = tmp_path / "meta.json"
    with pytest.raises(DataError, match=r"positive_class is null.*run `dvc repro`"):
        default_model_uri(str(params), meta)
    meta.write_text('{"classes": ["0", "1"]}')
    assert default_model_uri(str(params), meta) == "models:/loans-1@champion"


@pytest.mark.parametrize("text", ['{"classes": ["0", "1"', '{"labels": ["0", "1"]}', "[]",
                                  '{"classes": []}'])
def test_a_corrupt_or_old_meta_json_is_one_line_naming_the_file(
        tmp_path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        text: str) -> None:
    from pipeline.cli import predict
    from pipeline.core.errors import DataError

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("data: {path: data/raw/loans.csv, positive_class: "
                                          "null}\n")
    meta = tmp_path / predict.META
    meta.parent.mkdir(parents=True)
    meta.write_text(text)
    with pytest.raises(DataError, match=rf"^{predict.META}: not a dataset metadata file .*"
                       r"rerun preprocess \(`dvc repro`\), or pass --model$"):
        predict.default_model_uri("params.yaml")
    with pytest.raises(SystemExit) as info:
        predict.main(["--input", ".", "--output", "x.csv"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.startswith(f"error: {predict.META}: not a dataset")
    assert len(err.strip().splitlines()) == 1, err
