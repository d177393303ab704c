"""Layer 3: the networks (logistic regression, MLP, CNN, backbones) and inference on arrays."""
