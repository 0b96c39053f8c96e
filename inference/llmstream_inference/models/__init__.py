"""Model sources, the embedded default model and the tiny test model."""
