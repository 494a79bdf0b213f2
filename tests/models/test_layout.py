"""``keraformer.models.layout_map``: every builder's embedding, attention and feed-forward
kernels sharded along the model axis (Megatron-LM's column/row split), the rest replicated;
and training under ``keras.distribution`` on two simulated host devices.

The distributed runs happen in a subprocess with ``KERAS_BACKEND=jax`` and
``XLA_FLAGS=--xla_force_host_platform_device_count=2`` (XLA's device count is fixed when JAX
starts), whatever backend runs the suite. There, a BERT classifier and a T5.1.1 are trained
with ``fit`` and keraformer's ``AdamW(accumulation_steps=2)`` (folded accumulation: 4
micro-batches, 2 updates) on one device, under ``DataParallel`` over both devices (BERT) and
under ``ModelParallel`` with a ``(batch 1, model 2)`` mesh and ``layout_map``; from the same
start, the distributed weights must equal the single-device ones within 1e-5 (max abs
difference; float32, the updates move weights by ~1e-2; measured ~6e-8), and each sharded
kernel must really be split over the two devices.
"""

import json
import os
import subprocess
import sys
import textwrap

import keras
import pytest

from keraformer.models import build_transformer_model, layout_map
from tests.references import ENCODERS, SEQ2SEQ, config_for, tiny_configs

ENCODER_CONFIG, T5_CONFIG = tiny_configs(64, layers=1, intermediate_size=32,
                                         max_position_embeddings=16)
COLUMN = (None, "model")  # split the output features
ROW = ("model", None)  # split the input features


def expected_layout(path):
    """The layout each weight should get, written out per name (independently of RULES)."""
    leaf = path.split("/")[-2:]
    if leaf[1] == "embeddings" and ("Embedding-" in leaf[0] or "Relative-Position" in leaf[0]):
        return COLUMN
    if leaf[0] in ("query", "key", "value", "input_dense", "gate_dense", "i_dense"):
        return COLUMN if leaf[1] == "kernel" else ("model",)
    if leaf[0] in ("output_dense", "o_dense") and leaf[1] == "kernel":
        return ROW
    if leaf[0] == "output" and leaf[1] == "kernel" and "attention" in path:
        return ROW
    return None


def mesh(model_devices=2):
    return keras.distribution.DeviceMesh((1, model_devices), ("batch", "model"),
                                         [f"cpu:{i}" for i in range(model_devices)])


@pytest.mark.parametrize("model_name", ENCODERS + SEQ2SEQ)
def test_every_builder_is_covered(model_name):
    config = T5_CONFIG if model_name in SEQ2SEQ else config_for(model_name, ENCODER_CONFIG)
    options = {"with_pool": True, "with_mlm": True} if model_name == "bert" else {}
    model = build_transformer_model(model=model_name, **config, **options)
    layouts = layout_map(model, mesh())
    sharded = 0
    for variable in model.weights:
        layout = layouts[variable.path]
        axes = None if layout is None else tuple(layout.axes)
        assert axes == expected_layout(variable.path), variable.path
        sharded += axes is not None
    assert sharded >= 4


def test_bad_meshes_and_models_are_named():
    model = build_transformer_model(model="bert", **ENCODER_CONFIG)
    with pytest.raises(ValueError, match="`model_parallel_dim_name` 'tensor' is not an axis"):
        layout_map(model, mesh(), model_parallel_dim_name="tensor")
    odd = build_transformer_model(model="bert", **{**ENCODER_CONFIG, "hidden_size": 15,
                                                   "num_attention_heads": 3})
    with pytest.raises(ValueError, match=r"Embedding-Token/embeddings of shape \(64, 15\) "
                                         r"cannot be split along axis 1 \(15\) over the 2"):
        layout_map(odd, mesh())
    inputs = keras.Input((4,))
    plain = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    with pytest.raises(ValueError, match="has no embedding / attention / feed-forward kernel"):
        layout_map(plain, mesh())
    with pytest.raises(TypeError, match="`device_mesh` must be a keras.distribution.DeviceMesh"):
        layout_map(model, ("batch", "model"))


SCRIPT = textwrap.dedent("""
    import json
    import sys

    import numpy as np
    import keras
    from keraformer.models import build_transformer_model, layout_map
    from keraformer.optimizers import AdamW

    ENCODER, T5 = json.loads(sys.argv[1])  # the test module's ENCODER_CONFIG and T5_CONFIG
    devices = keras.distribution.list_devices()
    assert len(devices) == 2, devices
    rng = np.random.RandomState(0)
    ids = rng.randint(1, 64, (32, 10)).astype("int32")
    ids[::3, 6:] = 0

    def bert():
        encoder = build_transformer_model(model="bert", **ENCODER)
        pooled = keras.layers.GlobalAveragePooling1D()(encoder.output)
        return keras.Model(encoder.inputs, keras.layers.Dense(2, activation="softmax")(pooled))

    def t5():
        return build_transformer_model(model="t5.1.1", **T5)

    decoder_ids = rng.randint(1, 64, (32, 6)).astype("int32")
    decoder_ids[:, 0] = 0
    cases = {"bert": (bert, [ids, np.zeros_like(ids)], (ids[:, 1] % 2).astype("int32")),
             "t5.1.1": (t5, [ids, decoder_ids], rng.randint(1, 64, (32, 6)))}
    grid = keras.distribution.DeviceMesh((1, 2), ("batch", "model"), devices)
    for name, (make, x, y) in cases.items():
        def trained(distribution=None, start=None):
            keras.utils.set_random_seed(1)
            if distribution is None:
                model = make()
            else:
                with distribution.scope():
                    model = make()
            if start is not None:
                model.set_weights(start)
            begin = model.get_weights()
            model.compile(AdamW(1e-2, accumulation_steps=2), "sparse_categorical_crossentropy")
            model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
            return model, begin

        single, start = trained()
        reference = single.get_weights()
        moved = max(np.abs(a - b).max() for a, b in zip(reference, start))
        assert moved > 1e-3, moved
        runs = {"ModelParallel": keras.distribution.ModelParallel(
            layout_map=layout_map(single, grid), batch_dim_name="batch")}
        if name == "bert":
            runs["DataParallel"] = keras.distribution.DataParallel(devices=devices)
        for kind, distribution in runs.items():
            model, _ = trained(distribution, start)
            if kind == "ModelParallel":
                split = [v for v in model.weights if v.path.endswith(
                    ("query/kernel", "output_dense/kernel", "Embedding-Token/embeddings"))]
                assert len(split) >= 3
                for variable in split:
                    shards = variable.value.addressable_shards
                    assert len(shards) == 2 and shards[0].data.size * 2 == variable.value.size, (
                        variable.path, variable.value.sharding)
            diff = max(np.abs(a - b).max() for a, b in zip(reference, model.get_weights()))
            print(name, kind, "moved", moved, "diff", diff)
            assert diff < 1e-5, (name, kind, diff)
""")


def test_data_and_model_parallel_fit_equal_one_device():
    env = {**os.environ, "KERAS_BACKEND": "jax",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    configs = json.dumps([ENCODER_CONFIG, T5_CONFIG])
    result = subprocess.run([sys.executable, "-c", SCRIPT, configs], capture_output=True,
                            text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert result.stdout.count("diff") == 3, result.stdout
