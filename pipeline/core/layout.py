"""Names of the files tune, train, evaluate and register hand each other, as dvc.yaml says them.

dvc.yaml spells the same paths (it is DVC's file; tests/test_dvc_yaml.py checks the stages'
defaults against it). A folder written and read by one module keeps its inner names there:
a dataset folder's in pipeline/data/dataset.py, a model folder's in pipeline/models/networks.py,
fingerprints in pipeline/core/fingerprints.py. The data stages import none of this, so renaming
a report never re-decodes the images.
"""

from __future__ import annotations

MODELS = "models"  # tune's and train's output folder
REPORTS = "reports"  # train's, evaluate's and register's output folder

# In MODELS: tune → train.
BEST_PARAMS = "best_params.json"

# In REPORTS: train → evaluate (and the report).
TRAIN_METRICS = "train_metrics.json"
TRAIN_HISTORY = "train_history.json"
THRESHOLD_PREDICTIONS = "threshold_predictions.csv"
# evaluate → register (and the report).
METRICS = "metrics.json"
TEST_PREDICTIONS = "test_predictions.csv"
PLOTS = "plots"  # curve data as JSON rows (DVC plots format)
FIGURES = "figures"  # the PNGs dvc.yaml's `plots:` shows
# register → predict (and the report).
REGISTRATION = "registration.json"


def in_models(name: str) -> str:
    """A file in the models folder, as dvc.yaml names it."""
    return f"{MODELS}/{name}"


def in_reports(name: str) -> str:
    """A file in the reports folder, as dvc.yaml names it."""
    return f"{REPORTS}/{name}"
