"""Model parallelism: ``layout_map`` shards a builder's weights over a device mesh for
``keras.distribution.ModelParallel`` (KerasHub's ``get_layout_map`` convention).

The kernels are split along the mesh's model axis as in Megatron-LM (Shoeybi et al. 2019):
the query/key/value projections, the feed-forward input (and gate) projections and GAU's
``i_dense`` by output column, the attention output, feed-forward output and GAU's ``o_dense``
by input row, so each device holds a slice of every head and of the hidden units; the
embedding tables (tokens, segments, positions, T5's relative-position buckets) by their
feature axis. Biases follow their kernel's output axis. Norms, the pooler, the MLM and LM
heads, LoRA adapters and everything else are replicated. Every weight is replicated across
the data axis, along which ``ModelParallel(batch_dim_name=...)`` splits the batch.
"""

import re

import keras

# (regular expression the whole variable path matches, layout; "model" is the model axis)
RULES = (
    (r"(.*/)?Embedding-(Token|Segment|Position)/embeddings", (None, "model")),
    (r"(.*/)?(Encoder|Decoder)-Relative-Position/embeddings", (None, "model")),
    (r".*/(query|key|value)/kernel", (None, "model")),
    (r".*/(query|key|value)/bias", ("model",)),
    (r".*attention/output/kernel", ("model", None)),
    (r".*/feedforward/(input_dense|gate_dense)/kernel", (None, "model")),
    (r".*/feedforward/(input_dense|gate_dense)/bias", ("model",)),
    (r".*/feedforward/output_dense/kernel", ("model", None)),
    (r".*/attention/i_dense/kernel", (None, "model")),
    (r".*/attention/i_dense/bias", ("model",)),
    (r".*/attention/o_dense/kernel", ("model", None)),
)
FAMILIES = {"embedding": r"Embedding-Token/", "attention": r"/(query|i_dense)/kernel$",
            "feed-forward": r"/(feedforward/input_dense|attention/o_dense)/kernel$"}


def layout_map(model, device_mesh, model_parallel_dim_name="model",
               data_parallel_dim_name="batch"):
    """A ``keras.distribution.LayoutMap`` sharding the embedding, attention and feed-forward
    kernels of a keraformer model along ``model_parallel_dim_name`` of ``device_mesh``.

    ``model`` is a model built by ``build_transformer_model`` (or its builder): its weights are
    checked to be covered (at least one embedding, attention and feed-forward kernel) and
    their sharded axes divisible by the model axis size, so that a mismatch is an error here
    rather than inside XLA. Build the model to train inside the distribution's scope, where
    the layouts apply to new variables::

        mesh = keras.distribution.DeviceMesh((1, 2), ("batch", "model"),
                                             keras.distribution.list_devices())
        distribution = keras.distribution.ModelParallel(
            layout_map=layout_map(model, mesh), batch_dim_name="batch")
        with distribution.scope():
            model = build_transformer_model(...)  # same arguments

    Example:

        >>> import keras
        >>> from keraformer.models import build_transformer_model, layout_map
        >>> bert = build_transformer_model(vocab_size=30, hidden_size=8, num_hidden_layers=2,
        ...                                num_attention_heads=2, intermediate_size=16)
        >>> mesh = keras.distribution.DeviceMesh((1, 1), ("batch", "model"),
        ...                                      keras.distribution.list_devices()[:1])
        >>> layouts = layout_map(bert, mesh)
        >>> query = next(w for w in bert.weights if w.path.endswith("query/kernel"))
        >>> layouts[query.path].axes                       # Megatron's column split
        (None, 'model')
    """
    model = getattr(model, "model", model)  # a builder
    if not isinstance(model, keras.Model):
        raise TypeError(f"`model` must be a Keras model built by build_transformer_model (or "
                        f"its builder); received {type(model).__name__}")
    if not isinstance(device_mesh, keras.distribution.DeviceMesh):
        raise TypeError(f"`device_mesh` must be a keras.distribution.DeviceMesh; received "
                        f"{type(device_mesh).__name__}")
    axes = dict(zip(device_mesh.axis_names, device_mesh.shape))
    for name, value in (("model_parallel_dim_name", model_parallel_dim_name),
                        ("data_parallel_dim_name", data_parallel_dim_name)):
        if value not in axes:
            raise ValueError(f"`{name}` {value!r} is not an axis of `device_mesh`, whose axes "
                             f"are {list(device_mesh.axis_names)}")
    size = axes[model_parallel_dim_name]
    layouts = {}
    for variable in model.weights:
        rules = [layout for pattern, layout in RULES if re.fullmatch(pattern, variable.path)]
        if not rules:
            continue
        layout = tuple(model_parallel_dim_name if axis == "model" else axis
                       for axis in rules[0])
        for axis, (dim, name) in enumerate(zip(variable.shape, layout)):
            if name is not None and dim % size:
                raise ValueError(f"{variable.path} of shape {tuple(variable.shape)} cannot be "
                                 f"split along axis {axis} ({dim}) over the {size} devices of "
                                 f"mesh axis {model_parallel_dim_name!r}; pick a model axis "
                                 f"size that divides it")
        layouts[variable.path] = layout
    missing = [family for family, pattern in FAMILIES.items()
               if not any(re.search(pattern, path) for path in layouts)]
    if missing:
        raise ValueError(f"`model` {model.name!r} has no {' / '.join(missing)} kernel that "
                         f"layout_map knows; it shards only keraformer builders' weights")
    result = keras.distribution.LayoutMap(device_mesh)
    for pattern, layout in RULES:
        result[pattern] = tuple(model_parallel_dim_name if axis == "model" else axis
                                for axis in layout)
    return result
