"""Layer 1, the base: errors, typed params, files, tags, services, locks (no torch, no MLflow)."""
