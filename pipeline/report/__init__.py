"""Layer 9: the experiment report across git revisions (`python -m pipeline.report`)."""
