"""Model builders: BERT, RoBERTa, RoFormer (v1, v2, GAU-α) and T5 (1.0, 1.1, mT5)."""

from keraformer.models.builders import MODELS, build_transformer_model, load_pretrained
from keraformer.models.heads import (ConditionalRandomField, EfficientGlobalPointer,
                                     GlobalPointer)
from keraformer.models.lora import enable_lora
from keraformer.models.layout import layout_map
