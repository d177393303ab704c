"""Layer 6: the MLflow boundary for runs: store, run lifecycle, logging, records, views."""
