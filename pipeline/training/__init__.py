"""Layer 5: the training loop, its callbacks and feeds, cross-validation and the final fit."""
