"""The registered raw-input model: saved preprocessing + network + the chosen threshold."""

from __future__ import annotations

import base64
import json
import math
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models.signature import ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.types.schema import AnyType, ColSpec, DataType, Schema
from PIL import Image

from pipeline.dataset import DatasetMeta
from pipeline.engine import model_precision, predict_proba
from pipeline.errors import DataError
from pipeline.images import decode_image, image_to_array
from pipeline.models import load_model
from pipeline.tables import transform_table

IMAGE_COLUMNS = ("image", "pixels")


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def pixels_to_array(pixels: Any, size: int, channels: int) -> np.ndarray:
    """Raw pixels (H×W or H×W×C; 0–255 or 0–1) → the same CHW floats image decoding gives."""
    arr = np.asarray(pixels)
    if arr.dtype == object:
        arr = np.stack([np.asarray(r) for r in arr])
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)):
        raise DataError(f"pixels of shape {arr.shape}: expected H×W or H×W×C with C in 1, 3, 4")
    arr = arr.astype(np.float64)
    if arr.max(initial=0.0) <= 1.0:
        arr = arr * 255.0  # 0–1 floats
    arr = np.clip(np.round(arr), 0, 255).astype(np.uint8)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    # Through PIL, exactly like a decoded file, so resizing matches training.
    return image_to_array(Image.fromarray(arr), size, channels)


def frame_to_features(frame: pd.DataFrame, meta: DatasetMeta) -> np.ndarray:
    """Raw rows (CSV columns, or image bytes/pixels) → model inputs with the saved preprocessing."""
    if meta.table is not None:
        return transform_table(frame, meta.table, where="model input")
    assert meta.image is not None
    extra = [str(c) for c in frame.columns if c not in IMAGE_COLUMNS]
    if extra:
        raise DataError(f"model input: unexpected columns {extra}; image models take "
                        f"{list(IMAGE_COLUMNS)}")
    size, channels = meta.image.size, meta.image.channels
    rows = []
    for i in range(len(frame)):
        image = frame["image"].iloc[i] if "image" in frame else None
        pixels = frame["pixels"].iloc[i] if "pixels" in frame else None
        try:
            if not _missing(image):
                if isinstance(image, str):
                    image = base64.b64decode(image)  # JSON clients send base64 text
                rows.append(decode_image(bytes(image), size, channels))
            elif pixels is not None and not (np.isscalar(pixels) and _missing(pixels)):
                rows.append(pixels_to_array(pixels, size, channels))
            else:
                raise DataError("needs an 'image' (encoded bytes) or 'pixels' value")
        except DataError as err:
            raise DataError(f"model input row {i}: {str(err).removeprefix('<bytes>: ')}") \
                from None
    if not rows:
        return np.zeros((0, channels, size, size), dtype=np.uint8)
    return np.stack(rows)  # uint8, scaled on the device like the training batches


class RawInputClassifier(mlflow.pyfunc.PythonModel):
    """pyfunc: raw rows → positive-class probability and predicted class name."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        """Rebuild the network from safetensors + JSON; nothing here unpickles a module."""
        folder = Path(context.artifacts["weights"]).parent
        config_path = Path(context.artifacts["model_config"])
        if config_path.parent != folder:
            raise DataError(f"{config_path}: expected beside {context.artifacts['weights']}")
        self.model, self.config = load_model(folder)
        self.precision = model_precision(self.config)  # as its threshold was chosen
        self.meta = DatasetMeta.read(context.artifacts["meta"])
        serving = json.loads(Path(context.artifacts["serving"]).read_text())
        self.threshold = float(serving["threshold"])
        self.classes = list(serving["classes"])

    def predict(self, context: Any, model_input: pd.DataFrame,
                params: dict[str, Any] | None = None) -> pd.DataFrame:
        """Probabilities and labels for raw inputs (see README: 'Serving')."""
        frame = pd.DataFrame(model_input)
        try:
            if len(frame.columns) == 0:
                # MLflow drops columns the signature does not know before we see the rows.
                raise DataError(f"model input has none of the columns this model reads "
                                f"({', '.join(input_schema(self.meta).input_names())})")
            X = frame_to_features(frame, self.meta)
        except DataError as err:
            # A bad request (HTTP 400 when served) with our message, not a server traceback.
            raise MlflowException(str(err), error_code=INVALID_PARAMETER_VALUE) from None
        probs = predict_proba(self.model, X, precision=self.precision) if len(X) else np.zeros(0)
        labels = [self.classes[int(p >= self.threshold)] for p in probs]
        return pd.DataFrame({"probability": probs, "label": labels})


def input_schema(meta: DatasetMeta) -> Schema:
    """The raw-input signature: original CSV columns (all optional), or image bytes/pixels."""
    if meta.image is not None:
        # Any: integer 0-255 and float 0-1 pixel arrays are both accepted (pixels_to_array);
        # a double array type would make MLflow refuse JSON integers.
        return Schema([ColSpec(DataType.binary, "image", required=False),
                       ColSpec(AnyType(), "pixels", required=False)])
    assert meta.table is not None
    types = {"bool": DataType.boolean, "string": DataType.string}
    return Schema([ColSpec(types.get(meta.table.dtypes.get(c, "float"), DataType.double), c,
                           required=False) for c in meta.table.columns])


def signature(meta: DatasetMeta) -> ModelSignature:
    """Input schema from the training metadata; output probability + label."""
    return ModelSignature(inputs=input_schema(meta), outputs=Schema([
        ColSpec(DataType.double, "probability"), ColSpec(DataType.string, "label")]))


def raw_inputs(meta: DatasetMeta, ids: list[str]) -> pd.DataFrame:
    """The raw rows behind processed sample ids, typed as the signature wants them."""
    source = Path(meta.path)
    if meta.table is None:
        return pd.DataFrame({"image": [(source / i).read_bytes() for i in ids]})
    frame = pd.read_csv(source)
    rows = frame.loc[[int(i) for i in ids]].drop(columns=[meta.table.target])
    return conform_table(rows, meta.table.dtypes)


def contract(meta: DatasetMeta, threshold: float) -> dict[str, Any]:
    """What a caller needs to build inputs: kind, classes, image geometry or CSV columns."""
    out: dict[str, Any] = {"kind": meta.kind, "classes": list(meta.classes),
                           "threshold": threshold}
    if meta.image is not None:
        out["image"] = {"size": meta.image.size, "channels": meta.image.channels}
    if meta.table is not None:
        out["table"] = {"columns": list(meta.table.columns), "dtypes": meta.table.dtypes,
                        "target": meta.table.target}
    return out


def conform_table(frame: pd.DataFrame, kinds: dict[str, str]) -> pd.DataFrame:
    """Cast CSV columns to the signature's types (ints → float) so MLflow accepts them."""
    out = frame.copy()
    for col in out.columns:
        if kinds.get(col) in ("float", "int"):
            out[col] = pd.to_numeric(out[col], errors="coerce").astype("float64")
    return out
