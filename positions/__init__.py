"""Position encodings: learned (optionally hierarchical), rotary, relative bias, sinusoidal."""

from keraformer.positions.absolute import PositionEmbedding
