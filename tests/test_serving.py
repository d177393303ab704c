"""The served-request contract: pixel values, image rows, the per-request budget, error bodies.

The live `mlflow models serve` cases are in benchmarks/attacks/serving.py (tests/test_attack.py);
these run in-process in about a second.
"""

from __future__ import annotations

import dataclasses
import io
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.core.errors import ConfigError, DataError
from pipeline.data.images import decode_image
from pipeline.data.model_inputs import Budget, BudgetError, image_rows, pixel_values, request_budget

GRAY = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(("pixels", "message"), [
    ([[0.5, float("nan")], [1.0, 0.0]], "pixels hold NaN at [0, 1]"),
    ([[0, None], [255, 3]], "pixels hold null at [0, 1]"),
    ([[0.5, float("inf")]], "pixels hold inf at [0, 1]"),
    ([[0, -5], [255, 3]], "pixel value -5 at [0, 1]: integer pixels are 0-255"),
    ([[0, 300]], "pixel value 300 at [0, 1]"),
    ([[0.0, 1.5], [255.0, 3.0]], "pixel value 1.5 at [0, 1]: float pixels are all within 0-1"),
    ([[-0.5, 0.5]], "pixel value -0.5 at [0, 0]"),
    ([["a", "b"]], "pixels hold 'a' at [0, 0]"),
    ([[True, False]], "pixels hold True at [0, 0]"),
    ([[0, 1], [1]], "pixels are ragged"),
    ([[[1, 2]]], "pixels of shape (1, 1, 2)"),
    ([[]], "pixels of shape (1, 0)"),
    (7, "pixels of shape ()"),
])
def test_pixels_out_of_contract_are_refused_naming_the_value(pixels, message: str) -> None:
    with pytest.raises(DataError) as info:
        pixel_values(pixels)
    assert message in str(info.value)


def test_pixel_scales_give_the_image_the_png_gives() -> None:
    # 0-255 integers, whole-number floats 0-255 and 0-1 floats are the same image, one NaN
    # anywhere is refused rather than switching the whole image's scale off.
    for pixels in (GRAY.tolist(), GRAY.astype(float).tolist(), (GRAY / 255.0).tolist(),
                   GRAY, GRAY.astype(np.int64)):
        np.testing.assert_array_equal(pixel_values(pixels), GRAY)
    rows = image_rows(pd.DataFrame({"pixels": [GRAY.tolist(), (GRAY / 255.0).tolist()],
                                    "image": [None, None]}), 4, 1)
    decoded = decode_image(png(GRAY), 4, 1)
    np.testing.assert_array_equal(rows[0], decoded)
    np.testing.assert_array_equal(rows[1], decoded)
    rgb = np.stack([GRAY] * 3, axis=-1)
    np.testing.assert_array_equal(image_rows(pd.DataFrame({"pixels": [rgb]}), 4, 3)[0],
                                  decode_image(png(rgb), 4, 3))


def test_a_row_with_both_image_and_pixels_is_refused() -> None:
    frame = pd.DataFrame({"image": [png(GRAY), png(GRAY)], "pixels": [None, GRAY.tolist()]})
    with pytest.raises(DataError, match="model input row 1: has both 'image' and 'pixels'"):
        image_rows(frame, 4, 1)
    with pytest.raises(DataError, match="row 0: 'image' text is not base64"):
        image_rows(pd.DataFrame({"image": ["not base64!"]}), 4, 1)


def test_budget_refuses_by_header_before_decoding() -> None:
    # The header says 100x100; the pixel data is cut off, so decoding would fail: the
    # budget answers first, from the header alone.
    cut = png(np.zeros((100, 100), np.uint8))[:60]
    frame = pd.DataFrame({"image": [cut, cut]})
    with pytest.raises(BudgetError, match=r"20,000 pixels in 2 row\(s\).*"
                                          r"PIPELINE_MAX_REQUEST_PIXELS = 19,999 per request"):
        image_rows(frame, 4, 1, Budget(rows=10, pixels=19_999))
    with pytest.raises(DataError, match="row 0: not a readable image"):
        image_rows(frame, 4, 1, Budget(rows=10, pixels=20_000))
    with pytest.raises(BudgetError, match="64 pixels in 1 row"):
        image_rows(pd.DataFrame({"pixels": [GRAY]}), 4, 1, Budget(rows=10, pixels=63))


def test_request_budget_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PIPELINE_MAX_REQUEST_ROWS", raising=False)
    monkeypatch.setenv("PIPELINE_MAX_REQUEST_PIXELS", "1_000")
    assert request_budget() == Budget(rows=10_000, pixels=1000)
    monkeypatch.setenv("PIPELINE_MAX_REQUEST_ROWS", "-3")
    with pytest.raises(ConfigError, match="PIPELINE_MAX_REQUEST_ROWS = '-3': must be a whole"):
        request_budget()


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory):
    """The pyfunc class on a tiny untrained logreg, loaded as the scoring server loads it."""
    import mlflow.pyfunc.scoring_server  # noqa: F401  # what marks the process as serving
    from mlflow.pyfunc import PythonModelContext

    from pipeline.core.config import ModelConfig, TrainConfig
    from pipeline.data.dataset import DatasetMeta, ImageSpec
    from pipeline.models.networks import CONFIG_FILE, WEIGHTS_FILE, build_model, save_model
    from pipeline.registry.serving import RawInputClassifier

    work = tmp_path_factory.mktemp("pyfunc")
    meta = DatasetMeta("imagefolder", str(work), ("cat", "dog"),
                       image=ImageSpec(8, 1, (0.3,), (0.2,)))
    (work / "meta.json").write_text(json.dumps(meta.to_json()))
    (work / "serving.json").write_text(json.dumps({"threshold": 0.5, "classes": ["cat", "dog"]}))
    cfg = ModelConfig(type="logreg")
    save_model(build_model(cfg, (1, 8, 8), (0.3,), (0.2,)), work / "m", {
        "model": dataclasses.asdict(cfg), "train": dataclasses.asdict(TrainConfig()),
        "input_shape": [1, 8, 8], "norm": {"mean": [0.3], "std": [0.2]}})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PIPELINE_MAX_REQUEST_ROWS", "3")
        mp.setenv("PIPELINE_MAX_REQUEST_PIXELS", "150")
        model = RawInputClassifier()
        model.load_context(PythonModelContext({
            "weights": str(work / "m" / WEIGHTS_FILE),
            "model_config": str(work / "m" / CONFIG_FILE),
            "meta": str(work / "meta.json"), "serving": str(work / "serving.json")}, None))
    return model


def refusal(model, frame: pd.DataFrame):
    from pipeline.registry.serving import RequestError

    with pytest.raises(RequestError) as info:
        model.predict(None, frame)
    err = info.value
    err.message = f"Failed to predict data '{frame}'. \nError: {err.message}"  # as the server
    body = json.loads(err.serialize_as_json())
    assert "stack_trace" not in body and "\n" not in body["message"], body
    return err.get_http_status_code(), body["message"]


def test_served_pyfunc_answers_one_line_with_the_right_status(classifier) -> None:
    assert classifier.budget == Budget(rows=3, pixels=150)
    assert len(classifier.predict(None, pd.DataFrame({"pixels": [GRAY, GRAY / 255.0]}))) == 2
    assert refusal(classifier, pd.DataFrame({"pixels": [[[0.5, float("nan")]]]})) == (
        400, "model input row 0: pixels hold NaN at [0, 1]: every value must be finite")
    status, message = refusal(classifier, pd.DataFrame({"pixels": [GRAY] * 4}))
    assert status == 413 and "4 rows, more than PIPELINE_MAX_REQUEST_ROWS = 3" in message
    status, message = refusal(classifier, pd.DataFrame({"pixels": [GRAY] * 3}))
    assert status == 413 and "192 pixels in 3 row(s)" in message
    assert "PIPELINE_MAX_REQUEST_PIXELS = 150" in message


def test_unexpected_failure_is_a_500_without_traceback(classifier, monkeypatch) -> None:
    from pipeline.registry import serving

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(serving, "predict_proba", broken)
    status, message = refusal(classifier, pd.DataFrame({"pixels": [GRAY]}))
    assert status == 500 and message.startswith("model failed on this input (RuntimeError)")


def test_scoring_server_parse_errors_carry_no_traceback(classifier) -> None:
    from mlflow.exceptions import MlflowException
    from mlflow.pyfunc import scoring_server

    # What the server answers a CSV body it cannot parse, once the model is loaded there.
    with pytest.raises(MlflowException) as info:
        scoring_server.parse_csv_input(io.StringIO('a,b\n1,"2\n'))
    body = info.value.serialize_as_json()
    assert "Failed to parse input" in body
    assert "stack_trace" not in body and "Traceback" not in body and ".py" not in body
