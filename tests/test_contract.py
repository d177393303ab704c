"""A registered model is one prediction task: its contract, its default name, the refusal."""

from __future__ import annotations

import itertools

import pytest
from mlflow.types.schema import Array, ColSpec, DataType, Schema

from pipeline.core.errors import ConfigError
from pipeline.data.dataset import DatasetMeta, ImageSpec
from pipeline.registry import signature
from pipeline.registry.contract import IMAGE_INPUTS, MAX_NAME, Contract, model_name, refusal
from pipeline.registry.gate import schema_contract

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


@pytest.mark.parametrize("bad", ["spam's filter", 'the "filter"', "a\\b", "x" * (MAX_NAME + 1)])
def test_a_name_that_breaks_the_registry_search_is_a_config_error_naming_it(bad: str) -> None:
    # The registry is searched with `name = '…'`: a quote there was a traceback, not a message.
    with pytest.raises(ConfigError) as info:
        model_name(bad, "data/raw/x.csv", "1")
    message = str(info.value)
    assert message.startswith("register.model_name = " + repr(bad)[:40]) and "\n" not in message
    assert f"at most {MAX_NAME} characters without '/', ':', quotes" in message
    assert len(message) < 300
    assert model_name("x" * MAX_NAME, "data/raw/x.csv", "1")[0] == "x" * MAX_NAME


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


def image_meta(size: int, channels: int) -> DatasetMeta:
    """An image dataset's metadata with this geometry."""
    return DatasetMeta("imagefolder", "data/raw/digits", ("even", "odd"), image=ImageSpec(
        size, channels, (0.5,) * channels, (0.25,) * channels))


def test_image_contracts_ignore_geometry_and_the_logged_pixel_type() -> None:
    """Image size and channels are not part of the contract, nor what a signature typed pixels
    as (`array` before commit ddf4dc0, `any` since): the pyfunc takes any image it is sent."""
    small, large = (schema_contract("image", ("even", "odd"),
                                    signature.input_schema(image_meta(*g)))
                    for g in ((8, 1), (224, 3)))
    legacy = schema_contract("image", ("even", "odd"), Schema([
        ColSpec(DataType.binary, "image", required=False),
        ColSpec(Array(DataType.double), "pixels", required=False)]))
    assert [(c.name, str(c.to_dict()["type"])) for c in signature.input_schema(
        image_meta(8, 1)).inputs] == list(IMAGE_INPUTS)  # the fixed inputs are what it serves
    for other in (large, legacy, Contract.from_tag(legacy.to_tag())):
        assert small.matches(other) and other.matches(small)
        assert small.differences(other) == "" and small.fingerprint() == other.fingerprint()
    # A tag written from an older signature still reads as the fixed image inputs.
    odd_tag = '{"kind":"image","classes":["even","odd"],"inputs_sha256":"0","inputs":null}'
    assert Contract.from_tag(odd_tag) == small
    relabelled = Contract.of("image", ("cat", "dog"), IMAGES)
    assert not small.matches(relabelled)
    assert small.differences(relabelled) == "labels even/odd, not cat/dog"


def test_a_refusal_always_says_how_the_tasks_differ() -> None:
    contracts = [
        Contract.of("image", ("even", "odd"), IMAGES),
        Contract.of("image", ("even", "odd"), [("image", "binary"), ("pixels", "array")]),
        Contract.of("image", ("odd", "even"), IMAGES),
        Contract.of("table", ("even", "odd"), TABLE),
        Contract.of("table", ("ham", "spam"), TABLE),
        Contract.of("table", ("ham", "spam"), TABLE[::-1]),
        Contract.of("table", ("ham", "spam"), TABLE[:2]),
        Contract.of("table", ("ham", "spam"), [("x1", "string"), *TABLE[1:]]),
        # The same columns listed twice: another hash, nothing a caller could send differently.
        Contract.of("table", ("ham", "spam"), [*TABLE, TABLE[0]]),
        Contract.from_tag(Contract.of("table", ("ham", "spam"), [
            (f"c{i}", "double") for i in range(5000)]).to_tag()),
    ]
    refused = 0
    for served, mine in itertools.permutations(contracts, 2):
        assert served.matches(mine) == mine.matches(served)
        if served.matches(mine):
            assert mine.differences(served) == ""
            continue
        refused += 1
        line = refusal("m", served, "champion v1", mine, "m2", "m2")
        assert "the same task" not in line and "another prediction task ()" not in line
        assert "another prediction task (" + mine.differences(served) + ")" in line
    assert refused > 60
