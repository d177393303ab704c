"""Layer 11: commands beside the DVC stages: predict, tune worker, team check."""
