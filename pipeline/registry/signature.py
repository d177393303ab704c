"""What the registered model declares it takes and answers: its MLflow signature, and the
input contract a caller reads from its metadata."""

from __future__ import annotations

from typing import Any

from mlflow.models.signature import ModelSignature
from mlflow.types.schema import AnyType, ColSpec, DataType, Schema

from pipeline.data.dataset import DatasetMeta


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


def model_signature(meta: DatasetMeta) -> ModelSignature:
    """Input schema from the training metadata; output probability + label."""
    return ModelSignature(inputs=input_schema(meta), outputs=Schema([
        ColSpec(DataType.double, "probability"), ColSpec(DataType.string, "label")]))


def contract(meta: DatasetMeta, threshold: float) -> dict[str, Any]:
    """What a caller needs to build inputs: kind, classes, image geometry or CSV columns."""
    out: dict[str, Any] = {"kind": meta.kind, "classes": list(meta.classes),
                           "threshold": threshold}
    if meta.image is not None:
        out["image"] = {"size": meta.image.size, "channels": meta.image.channels}
    if meta.table is not None:
        out["table"] = {"columns": list(meta.table.columns), "dtypes": meta.table.dtypes,
                        "target": meta.table.target, "dropped": meta.table.dropped,
                        "sep": meta.table.sep, "decimal": meta.table.decimal}
    return out
