"""The registered raw-input model (saved preprocessing + network + the chosen threshold) and
how it behaves inside `mlflow models serve`: one-line refusals, no tracebacks, flat memory."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import (
    INTERNAL_ERROR,
    INVALID_PARAMETER_VALUE,
    REQUEST_LIMIT_EXCEEDED,
)

from pipeline.core.errors import DataError
from pipeline.core.heap import keep_memory_flat, release_memory
from pipeline.data.dataset import DatasetMeta
from pipeline.data.model_inputs import Budget, BudgetError, request_budget
from pipeline.models.device import model_precision
from pipeline.models.inference import predict_proba
from pipeline.models.networks import load_model
from pipeline.registry.features import frame_to_features
from pipeline.registry.signature import input_schema

log = logging.getLogger(__name__)
SCORING_SERVER = "mlflow.pyfunc.scoring_server"  # imported only by the process serving us


_ERROR_CODES = {400: INVALID_PARAMETER_VALUE, 413: REQUEST_LIMIT_EXCEEDED, 500: INTERNAL_ERROR}


class RequestError(MlflowException):
    """A request the model refuses: its HTTP status, and a message that is our one line."""

    def __init__(self, message: str, status: int = 400) -> None:
        self._line, self.status = message, status
        super().__init__(message, error_code=_ERROR_CODES[status])

    @property
    def message(self) -> str:
        """Our line. The scoring server prefixes a repr of the whole request (megabytes for
        a big one, over several lines); what the client needs is which row and value."""
        return self._line

    @message.setter
    def message(self, value: str) -> None:
        pass

    def get_http_status_code(self) -> int:
        """The status we chose: MLflow's error codes map to no 413 (429 is a rate limit)."""
        return self.status


def quiet_scoring_server() -> None:
    """Keep server stack traces out of `mlflow models serve` error bodies; log them instead."""
    # MLflow has no option for it (mlflow#16537): the 400 of a CSV/Parquet body it cannot
    # parse, and of any exception from predict that is not an MlflowException, carries the
    # server's traceback (file paths, code) as `stack_trace`. Every error body is
    # MlflowException.serialize_as_json; wrapping that public method, in the serving process
    # only (its app is built before our load returns: nothing else can be hooked), is the
    # smallest change `mlflow models serve` keeps. Its private helper would be narrower.
    if getattr(MlflowException.serialize_as_json, "quiet", False):
        return
    serialize = MlflowException.serialize_as_json

    def without_traceback(self: MlflowException) -> str:
        trace = self.json_kwargs.pop("stack_trace", None)
        if trace:
            log.warning("error answered without its traceback: %s\n%s", self.message, trace)
        return serialize(self)

    without_traceback.quiet = True  # type: ignore[attr-defined]
    MlflowException.serialize_as_json = without_traceback  # type: ignore[method-assign]


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
        # Served (the scoring server imports itself before loading us): bound each request
        # and keep tracebacks out of error bodies; in-process callers are not bounded.
        self.served = SCORING_SERVER in sys.modules
        self.budget: Budget | None = None
        if self.served:
            self.budget = request_budget()
            quiet_scoring_server()
            keep_memory_flat()

    def predict(self, context: Any, model_input: pd.DataFrame,
                params: dict[str, Any] | None = None) -> pd.DataFrame:
        """Probabilities and labels for raw inputs (see README: 'Serving')."""
        frame = pd.DataFrame(model_input)
        try:
            if len(frame.columns) == 0:
                # MLflow drops columns the signature does not know before we see the rows.
                raise DataError(f"model input has none of the columns this model reads "
                                f"({', '.join(input_schema(self.meta).input_names())})")
            X = frame_to_features(frame, self.meta, self.budget)
            probs = predict_proba(self.model, X, precision=self.precision) if len(X) \
                else np.zeros(0)
        except DataError as err:
            # A bad request (HTTP 400/413 when served) with our message, not a traceback.
            raise RequestError(str(err), 413 if isinstance(err, BudgetError) else 400) from None
        except Exception as err:
            if not self.served:
                raise
            # The scoring server would send any other exception's stack trace (file paths,
            # code) to the client: it stays in the server log, the client gets one line.
            log.exception("predict failed on %d row(s)", len(frame))
            raise RequestError(f"model failed on this input ({type(err).__name__}); the "
                               "server log has the details", 500) from None
        finally:
            if self.served:
                release_memory()
        labels = [self.classes[int(p >= self.threshold)] for p in probs]
        return pd.DataFrame({"probability": probs, "label": labels})
