"""Layer 4: metrics, figures and the evaluate stage's report files (no training loop)."""
