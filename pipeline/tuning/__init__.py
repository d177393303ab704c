"""Layer 7: the Optuna study: storage, objective, trials and their MLflow runs."""
