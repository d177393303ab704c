"""Layer 8: the Model Registry: input contract, gate, registered pyfunc, batch scoring."""
