"""LoRA adapters on a pretrained backbone: ``enable_lora`` (Hu et al. 2021, "LoRA: Low-Rank
Adaptation of Large Language Models").

Each target ``Dense`` layer's kernel ``W`` becomes ``W + (alpha / rank) · A B`` with trainable
``A (in, rank)`` and ``B (rank, out)`` (``B`` starts at zero, so the model is unchanged until
it trains); this is Keras' own ``Dense.enable_lora``. Every other weight of the backbone is
frozen, biases and norms of the target layers included; layers outside the backbone (the
user's head) stay trainable.

Exports see the adapted model: ``Dense.kernel`` returns the merged ``W + (alpha / rank) · A B``,
so a builder's ``save_pretrained`` / ``save_weights_as_checkpoint`` write merged weights, and
Keras saves a LoRA ``Dense`` with its merged kernel: the ``.keras`` file reloads (safe mode)
as a plain model with the adapted model's outputs. To go on training adapters after a reload,
call ``enable_lora`` again: new adapters start from the merged weights.
"""

import numbers

import keras

DEFAULT_TARGETS = ("query", "value")
LOW_PRECISION = ("bfloat16", "float16")


def dense_layers(model):
    """Every ``Dense`` layer of ``model``, nested ones included (each once)."""
    return [layer for layer in model._flatten_layers(include_self=False, recursive=True)
            if isinstance(layer, keras.layers.Dense)]


def backbone_layers(model, backbone):
    """The layers whose weights ``enable_lora`` freezes."""
    if backbone is None:
        return model._flatten_layers(include_self=False, recursive=True)
    if isinstance(backbone, keras.layers.Layer):
        inner = backbone._flatten_layers(include_self=not isinstance(backbone, keras.Model),
                                         recursive=True)
    elif isinstance(backbone, (list, tuple)) and all(isinstance(layer, keras.layers.Layer)
                                                     for layer in backbone):
        inner = [sub for layer in backbone for sub in layer._flatten_layers(recursive=True)]
    else:
        raise TypeError(f"`backbone` must be None, a Keras model/layer or a list of layers; "
                        f"received {type(backbone).__name__}")
    present = {id(layer) for layer in model._flatten_layers(include_self=False)}
    outside = [layer.name for layer in inner if id(layer) not in present]
    if outside:
        raise ValueError(f"`backbone` must be part of `model`; its layers {outside[:5]} are "
                         f"not layers of {model.name!r}")
    return inner


def enable_lora(model, rank, alpha=None, targets=DEFAULT_TARGETS, backbone=None):
    """Add LoRA adapters of ``rank`` to the ``Dense`` layers named in ``targets`` and freeze
    every other weight of the backbone; returns ``model`` (changed in place).

    Call it before ``compile``. ``model`` is a builder's model, or a model built on one (a
    classifier head on top): by default every layer of ``model`` is backbone, so add the head
    after calling it, or pass ``backbone=`` (the builder's model, or a list of layers) to
    freeze only that part of a model that already has its head. ``targets`` are layer names:
    the attention projections are ``query``, ``key``, ``value`` and ``output`` (BERT,
    RoFormer, RoFormerV2 and T5's self- and cross-attention), GAU-α's are ``i_dense`` and
    ``o_dense``, feed-forward ``input_dense``, ``gate_dense`` and ``output_dense``. ``alpha``
    (default ``rank``) scales the update by ``alpha / rank``. The adapters are float32 even
    when the model was built under the ``"bfloat16"`` (or ``"float16"``) policy: the frozen
    weights, never updated, then need no float32 copy (half the memory of
    ``"mixed_bfloat16"``, the same bfloat16 products), while the adapters' updates keep
    float32 precision.

    Example:

        >>> import keras, numpy as np
        >>> from keraformer.models import build_transformer_model, enable_lora
        >>> bert = build_transformer_model(vocab_size=30, hidden_size=8, num_hidden_layers=2,
        ...                                num_attention_heads=2, intermediate_size=16)
        >>> enable_lora(bert, rank=2)  # adapters on query and value, rest frozen
        <TransformerModel name=bert, built=True>
        >>> classifier = keras.Model(bert.inputs, keras.layers.Dense(2)(bert.output[:, 0]))
        >>> sorted({w.path.split("/")[-1] for w in classifier.trainable_weights})
        ['bias', 'kernel', 'lora_kernel_a', 'lora_kernel_b']
    """
    if not isinstance(model, keras.Model):
        raise TypeError(f"`model` must be a Keras model; received {type(model).__name__}")
    if isinstance(rank, bool) or not isinstance(rank, numbers.Integral) or rank < 1:
        raise ValueError(f"`rank` must be an int >= 1; received {rank!r}")
    if alpha is not None and (isinstance(alpha, bool) or not isinstance(alpha, numbers.Real)
                              or not alpha > 0):
        raise ValueError(f"`alpha` must be None or a number > 0; received {alpha!r}")
    if isinstance(targets, str) or not targets or not all(isinstance(t, str) for t in targets):
        raise TypeError(f"`targets` must be a non-empty list or tuple of layer names; "
                        f"received {targets!r}")
    frozen = backbone_layers(model, backbone)
    frozen_ids = {id(layer) for layer in frozen}
    denses = [layer for layer in dense_layers(model) if id(layer) in frozen_ids]
    chosen = [layer for layer in denses if layer.name in targets]
    missing = sorted(set(targets) - {layer.name for layer in chosen})
    if missing:
        raise ValueError(f"`targets` {missing} name no Dense layer of the backbone; its Dense "
                         f"layers are named {sorted({layer.name for layer in denses})}")
    adapted = [layer.path for layer in chosen if layer.lora_enabled]
    if adapted:
        raise ValueError(f"LoRA is already enabled on {adapted[:3]}; enable_lora adds "
                         f"adapters once (reload the model or build it again to start over)")
    for layer in chosen:
        policy = layer.dtype_policy
        if policy.variable_dtype in LOW_PRECISION and policy.quantization_mode is None:
            # a frozen half-precision base: its adapters still train in float32
            layer.dtype_policy = f"mixed_{policy.variable_dtype}"
        layer.enable_lora(int(rank), lora_alpha=alpha)
    adapters = {id(v) for layer in chosen for v in (layer.lora_kernel_a, layer.lora_kernel_b)}
    for layer in frozen:
        for variable in layer._trainable_variables + layer._non_trainable_variables:
            if id(variable) not in adapters:
                variable.trainable = False
    return model


def lora_weights(model):
    """The adapter variables (``lora_kernel_a``/``lora_kernel_b``) of ``model``."""
    return [v for layer in dense_layers(model) if layer.lora_enabled
            for v in (layer.lora_kernel_a, layer.lora_kernel_b)]
