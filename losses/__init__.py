"""keraformer.losses."""
