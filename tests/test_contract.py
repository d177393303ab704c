"""A registered model is one prediction task: its contract, its default name, the refusal."""

from __future__ import annotations

import pytest

from pipeline.contract import Contract, model_name, refusal
from pipeline.errors import ConfigError

TABLE = [("x1", "double"), ("colour", "string"), ("flag", "boolean")]
IMAGES = [("image", "binary"), ("pixels", "any")]


@pytest.mark.parametrize(("path", "positive", "name"), [
    ("data/raw/digits", "odd", "digits-odd"),
    ("data/raw/breast_cancer.csv", "malignant", "breast_cancer-malignant"),
    ("data/raw/cats_vs_dogs/", "dog", "cats_vs_dogs-dog"),
    ("data/raw/Loans 2024.CSV", "will default", "Loans-2024-will-default"),
    ("data/raw/x.tsv", "1", "x-1"),
    (".", "yes", "data-yes"),
])
def test_auto_name_is_the_data_name_and_the_positive_class(path: str, positive: str,
                                                           name: str) -> None:
    got, why = model_name("auto", path, positive)
    assert got == name
    assert "register.model_name: auto" in why and repr(positive) in why


def test_an_explicit_name_is_kept_and_one_mlflow_refuses_is_a_config_error() -> None:
    assert model_name("fraud model", "data/raw/x.csv", "1") == ("fraud model",
                                                               "register.model_name")
    for bad in ("team/model", "models:x", " "):
        with pytest.raises(ConfigError, match=r"register\.model_name = .*must be auto or a name"):
            model_name(bad, "data/raw/x.csv", "1")


def test_contracts_match_on_kind_labels_and_columns_in_any_order() -> None:
    table = Contract.of("table", ("ham", "spam"), TABLE)
    assert table.matches(Contract.of("table", ("ham", "spam"), TABLE[::-1]))
    assert not table.matches(Contract.of("table", ("spam", "ham"), TABLE))  # positive class
    assert not table.matches(Contract.of("table", ("ham", "spam"), TABLE[:2]))
    assert not table.matches(Contract.of("table", ("ham", "spam"),
                                         [("x1", "string"), *TABLE[1:]]))
    assert Contract.from_tag(table.to_tag()) == table
    images = Contract.of("image", ("even", "odd"), IMAGES)
    assert images.describe() == "images → 'odd' vs 'even'"
    assert table.describe() == "table of 3 columns (x1, colour, flag) → 'spam' vs 'ham'"
    assert images.differences(table) == ("image input, not table; labels even/odd, not "
                                         "ham/spam")


def test_a_very_wide_table_keeps_the_hash_of_its_columns() -> None:
    wide = Contract.of("table", ("0", "1"), [(f"column_{i:05d}", "double")
                                             for i in range(5000)])
    back = Contract.from_tag(wide.to_tag())
    assert len(wide.to_tag()) < 1000 and back.inputs is None and back.matches(wide)
    narrow = Contract.of("table", ("0", "1"), [("a", "double")])
    assert "other columns" in back.differences(narrow)


def test_refusal_names_both_contracts_and_the_name_to_use() -> None:
    served = Contract.of("image", ("even", "odd"), IMAGES)
    mine = Contract.of("table", ("benign", "malignant"), [("mean radius", "double")])
    line = refusal("binary-classifier", served, "champion v1", mine,
                   "breast_cancer-malignant", "breast_cancer-malignant")
    assert "\n" not in line
    assert line.startswith("registered model 'binary-classifier' serves images → 'odd' vs "
                           "'even' (champion v1); this model takes table of 1 column "
                           "(mean radius) → 'malignant' vs 'benign'")
    assert "keeps its champion" in line
    assert "set register.model_name to 'breast_cancer-malignant' (what register.model_name: " \
           "auto names it)" in line
