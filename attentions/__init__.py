"""Attention variants: functional cores on ``(batch, length, heads, head_dim)`` and Layers."""

from keraformer.attentions.dot_product import (
    MultiHeadAttention,
    attention_probabilities,
    dot_product_attention,
    entropy_scale,
)
from keraformer.attentions.gated import GatedAttentionUnit, ScaleOffset
from keraformer.attentions.linear import LinearAttention, linear_attention
from keraformer.attentions.vq import VQAttention, quantize, vq_attention
