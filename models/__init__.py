"""keraformer.models."""
