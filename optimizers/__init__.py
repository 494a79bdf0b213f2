"""keraformer.optimizers."""
