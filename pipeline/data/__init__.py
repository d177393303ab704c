"""Layer 2: raw images and tables in, processed and augmented split arrays out."""
