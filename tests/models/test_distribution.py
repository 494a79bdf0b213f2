"""``model.fit`` under ``tf.distribute.MirroredStrategy`` over two logical CPU devices reaches
the same weights as one device (max abs difference < 1e-5 after 6 SGD steps, no dropout).

Runs in a subprocess, always on the TensorFlow backend, because logical devices must be
configured before TensorFlow starts.
"""

import os
import subprocess
import sys
import textwrap


SCRIPT = textwrap.dedent("""
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    from keraformer.models import build_transformer_model

    CONFIG = dict(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                  intermediate_size=24, max_position_embeddings=16, hidden_dropout_prob=0.0,
                  attention_probs_dropout_prob=0.0)
    rng = np.random.RandomState(0)
    ids = rng.randint(1, 50, (48, 10)).astype("int32")
    ids[::3, 6:] = 0
    x, y = [ids, np.zeros_like(ids)], (ids[:, 1] % 2).astype("int32")

    def classifier():
        encoder = build_transformer_model(model="bert", with_pool=True, **CONFIG)
        out = keras.layers.Dense(2, activation="softmax")(encoder.output)
        model = keras.Model(encoder.inputs, out)
        model.compile(keras.optimizers.SGD(0.1), "sparse_categorical_crossentropy")
        return model

    keras.utils.set_random_seed(1)
    single = classifier()
    start = single.get_weights()
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert strategy.num_replicas_in_sync == 2
    with strategy.scope():
        mirrored = classifier()
    mirrored.set_weights(start)
    single.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    mirrored.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    moved = max(np.abs(a - b).max() for a, b in zip(single.get_weights(), start))
    diff = max(np.abs(a - b).max() for a, b in zip(single.get_weights(), mirrored.get_weights()))
    print("moved", moved, "diff", diff)
    assert moved > 1e-3, moved
    assert diff < 1e-5, diff
""")


def test_mirrored_strategy_matches_one_device():
    env = {**os.environ, "KERAS_BACKEND": "tensorflow"}
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                            env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert "diff" in result.stdout
