"""Rotary position embedding (RoPE; Su et al. 2021, "RoFormer"), with length extrapolation.

Position ``m`` rotates each pair of features ``(x_a, x_b)`` by the angle ``m·θ_i`` with
``θ_i = base^(-2i/d)``, so that ``⟨R_m q, R_n k⟩`` depends on ``m − n`` only.
``interleaved=True`` pairs ``(x0, x1), (x2, x3), …`` (RoFormer checkpoints);
``interleaved=False`` pairs ``x_i`` with ``x_{i+d/2}`` (GPT-NeoX, Llama).
Extrapolation ("Transformer upgrade road" notes; Chen et al. 2023; bloc97 2023):
``scaling="linear"`` divides positions by ``factor`` (position interpolation);
``scaling="ntk"`` raises the base to ``base·factor^(d/(d−2))`` (NTK-aware scaling), which
keeps the highest frequencies and interpolates the lowest.
"""

import keras
from keras import ops

from keraformer.checks import check_broadcastable

SCALINGS = (None, "linear", "ntk")


def rotary_frequencies(dim, base=10000.0, scaling=None, factor=1.0):
    """``θ_i`` for ``i < dim/2``, float32, after the chosen scaling (positions stay integers)."""
    if scaling == "ntk":
        base = base * factor ** (dim / (dim - 2)) if dim > 2 else base
    exponents = ops.arange(0, dim // 2, dtype="float32") * (2.0 / dim)
    theta = ops.power(ops.cast(base, "float32"), -exponents)
    return theta / factor if scaling == "linear" else theta


def check_rotary_options(scaling, factor):
    """Raise ``ValueError`` for an unknown ``scaling`` or a non-positive ``factor``."""
    if scaling not in SCALINGS:
        raise ValueError(f"`scaling` must be one of {SCALINGS}; received {scaling!r}")
    if not factor > 0:
        raise ValueError(f"`factor` must be > 0; received {factor!r}")


def rotary_argument(rotary, size, size_name="`key_size`"):
    """The ``rotary`` argument of an attention layer: ``None``, a layer that rotates
    ``(batch, length, …, size)`` by position (a :class:`RotaryEmbedding`), or the config of
    one, as :func:`rotary_config` stores it in the layer's config. The rotated ``size``
    (``size_name`` in the error) must be even: rotations turn pairs of features."""
    if isinstance(rotary, dict):
        rotary = keras.saving.deserialize_keras_object(rotary)
    if rotary is not None and size % 2:
        raise ValueError(f"{size_name} must be even to rotate queries and keys with `rotary`; "
                         f"received {size}")
    return rotary


def rotary_config(rotary):
    """The ``rotary`` argument as an attention layer's ``get_config`` stores it."""
    return None if rotary is None else keras.saving.serialize_keras_object(rotary)


def apply_rotary(x, positions=None, base=10000, interleaved=True, scaling=None, factor=1.0):
    """Rotate ``x`` of shape ``(batch, length, heads, dim)`` or ``(batch, length, dim)``.

    ``positions``: ``(length,)`` or ``(batch, length)`` position ids (default ``0..length-1``),
    for decoding with a cache or packed sequences. ``dim`` must be even. Angles are computed in
    float32 and the result cast back to ``x``'s dtype.

    Example:

        >>> import numpy as np
        >>> from keraformer.positions import apply_rotary
        >>> x = np.ones((1, 3, 2, 4), "float32")          # (batch, length, heads, dim)
        >>> y = apply_rotary(x)
        >>> tuple(y.shape)
        (1, 3, 2, 4)
        >>> np.round(np.asarray(y)[0, 1, 0, :2], 4)  # position 1 turns the first pair by 1 rad
        array([-0.3012,  1.3818], dtype=float32)
    """
    check_rotary_options(scaling, factor)
    rank, dim = len(x.shape), x.shape[-1]
    if rank not in (3, 4):
        raise ValueError(f"`x` must have shape (batch, length, heads, dim) or (batch, length, "
                         f"dim); received shape {tuple(x.shape)}")
    if dim % 2:
        raise ValueError(f"`x` must have an even feature size (last axis) for rotary "
                         f"embedding; received shape {tuple(x.shape)}")
    if positions is None:
        positions = ops.arange(ops.shape(x)[1], dtype="float32")
    positions = ops.cast(positions, "float32")
    if len(positions.shape) not in (1, 2):
        raise ValueError(f"`positions` must have shape (length,) or (batch, length); received "
                         f"shape {tuple(positions.shape)}")
    axes = (("batch", x.shape[0]), ("length", x.shape[1]))[2 - len(positions.shape):]
    check_broadcastable("positions", positions, axes, exact=("length",))
    if len(positions.shape) == 1:
        positions = positions[None]
    angles = positions[..., None] * rotary_frequencies(dim, base, scaling, factor)
    if rank == 4:
        angles = angles[:, :, None, :]
    cos, sin = ops.cos(angles), ops.sin(angles)
    y = ops.cast(x, "float32")
    if interleaved:
        pairs = ops.reshape(y, tuple(ops.shape(y)[:-1]) + (dim // 2, 2))
        a, b = pairs[..., 0], pairs[..., 1]
        rotated = ops.stack([a * cos - b * sin, a * sin + b * cos], axis=-1)
        y = ops.reshape(rotated, ops.shape(y))
    else:
        a, b = y[..., : dim // 2], y[..., dim // 2:]
        y = ops.concatenate([a * cos - b * sin, a * sin + b * cos], axis=-1)
    return ops.cast(y, x.dtype)


@keras.saving.register_keras_serializable(package="keraformer")
class RotaryEmbedding(keras.layers.Layer):
    """Layer shell of :func:`apply_rotary` (no weights); attention layers take it as
    ``rotary=``. Call ``layer(x, positions=None)``; the output has ``x``'s shape.

    Example:

        >>> import numpy as np
        >>> from keraformer.positions import RotaryEmbedding, apply_rotary
        >>> x = np.random.default_rng(0).normal(size=(2, 5, 8)).astype("float32")
        >>> layer = RotaryEmbedding(scaling="ntk", factor=4.0)
        >>> bool(np.allclose(layer(x), apply_rotary(x, scaling="ntk", factor=4.0)))
        True
    """

    def __init__(self, base=10000, interleaved=True, scaling=None, factor=1.0, **kwargs):
        super().__init__(**kwargs)
        check_rotary_options(scaling, factor)
        self.base, self.interleaved, self.scaling, self.factor = base, interleaved, scaling, factor

    def call(self, x, positions=None):
        return apply_rotary(x, positions, self.base, self.interleaved, self.scaling, self.factor)

    def compute_output_shape(self, input_shape, *args, **kwargs):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "base": self.base, "interleaved": self.interleaved,
                "scaling": self.scaling, "factor": self.factor}
