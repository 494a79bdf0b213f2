"""Position encodings: learned (optionally hierarchical), rotary, relative bias, sinusoidal."""

from keraformer.positions.absolute import PositionEmbedding
from keraformer.positions.relative import RelativePositionBias, relative_position_bucket
from keraformer.positions.rotary import RotaryEmbedding, apply_rotary
from keraformer.positions.sinusoidal import SinusoidalPositionEmbedding
