"""Position encodings: learned (optionally hierarchical), rotary (with ReRoPE), relative bias,
sinusoidal, and random positions for training."""

from keraformer.positions.absolute import PositionEmbedding
from keraformer.positions.randomized import RandomPositions, random_positions
from keraformer.positions.relative import RelativePositionBias, relative_position_bucket
from keraformer.positions.rerope import rerope_scores
from keraformer.positions.rotary import RotaryEmbedding, apply_rotary
from keraformer.positions.sinusoidal import SinusoidalPositionEmbedding
