"""keraformer: Transformer research components and pretrained-model builders for Keras 3."""

__version__ = "0.1.0"
