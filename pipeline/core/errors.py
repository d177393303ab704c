"""Error types the stages turn into a one-line message and a non-zero exit."""


class PipelineError(Exception):
    """A user-facing problem with inputs: the message names the file, key or column and value."""


class ConfigError(PipelineError, ValueError):
    """A params.yaml key has an unknown name, a wrong type or an out-of-range value."""


class DataError(PipelineError, ValueError):
    """Raw or processed data cannot be used as given."""


class StoreError(PipelineError):
    """The MLflow tracking store or the Optuna storage cannot be used (missing, corrupt, down)."""


class OutputError(PipelineError):
    """An output cannot be written: the disk or quota is full, or a file-size limit is hit."""
