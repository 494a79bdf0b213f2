"""What the textbook Adam update on embeddings costs on TensorFlow: three ways to hand the
optimizer the gradient of a gather, timed side by side in one run.

- ``keras``: ``ops.take`` as Keras' own Embedding does. The gradient is a ``tf.IndexedSlices``
  with one slice per use of a row; Keras' optimizers square each slice, so Adam's update of
  a repeated row is wrong (the baseline of the ratios).
- ``unique``: the same sparse gradient with repeated rows summed first (``tf.unique`` and a
  segment sum in a custom gradient): right, still sparse; ``tf.unique`` has no XLA kernel, so
  it is not timed under ``jit_compile=True``.
- ``dense``: keraformer's ``gather_rows`` (what ``keraformer.embedding.Embedding`` uses): a
  dense ``(vocab, dim)`` gradient with repeated rows summed.

Two models: ``embedding`` (a BERT-base-Chinese table, 21128 × 768, and a 1-unit Dense head:
the gather's share of the step is as large as it gets) and ``bert`` (a keraformer BERT with
that table and ``--layers`` layers of width 768). Batch 16 × 128 random ids. Each of Adam and
SGD is stepped with ``train_on_batch`` as ``model.fit`` runs it, in a ``tf.function`` and
XLA-compiled; medians over alternating rounds (load on a shared machine hits all alike).
JAX needs none of this: its gather gradient is dense already.

Run: KERAS_BACKEND=tensorflow python benchmarks/embedding_gradients.py [--layers 2] [--rounds 5]
"""

import argparse
import contextlib
import statistics
import time

import keras
import numpy as np
import tensorflow as tf
from keras import ops

import keraformer.embedding
from keraformer.models import build_transformer_model

VOCAB, HIDDEN, BATCH, LENGTH = 21128, 768, 16, 128


def take_with_sparse_gradient(table, ids):
    """Keras' own gather: a ``tf.IndexedSlices`` gradient, one slice per use of a row."""
    return ops.take(table, ids, axis=0)


@tf.custom_gradient
def take_with_unique_slices(table, ids):
    rows = tf.gather(table, ids)

    def gradient(upstream):
        unique, position = tf.unique(tf.reshape(ids, [-1]))
        flat = tf.reshape(upstream, [-1, tf.shape(table)[-1]])
        summed = tf.math.unsorted_segment_sum(flat, position, tf.shape(unique)[0])
        return tf.IndexedSlices(summed, unique, tf.shape(table)), None
    return rows, gradient


def take_unique(table, ids):
    if isinstance(table, keras.Variable):
        table = table.value
    return take_with_unique_slices(tf.convert_to_tensor(table), tf.cast(ids, "int32"))


GATHERS = {"keras": take_with_sparse_gradient, "unique": take_unique,
           "dense": keraformer.embedding.gather_rows}


@contextlib.contextmanager
def gather(name):
    """Trace keraformer's Embedding with gather ``name`` (its call looks the function up)."""
    original = keraformer.embedding.gather_rows
    keraformer.embedding.gather_rows = GATHERS[name]
    try:
        yield
    finally:
        keraformer.embedding.gather_rows = original


def build(kind, layers):
    if kind == "embedding":
        ids = keras.Input((LENGTH,), dtype="int32")
        hidden = keraformer.embedding.Embedding(VOCAB, HIDDEN)(ids)
        return keras.Model(ids, keras.layers.Dense(1)(hidden))
    return build_transformer_model(
        model="bert", vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=layers,
        num_attention_heads=12, intermediate_size=4 * HIDDEN, dropout_rate=0.0)


def batch(kind, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, VOCAB, (BATCH, LENGTH)).astype("int32")
    if kind == "embedding":
        return ids, np.zeros((BATCH, LENGTH, 1), "float32")
    segments = np.zeros_like(ids)
    segments[:, LENGTH // 2:] = 1
    return [ids, segments], rng.standard_normal((BATCH, LENGTH, HIDDEN)).astype("float32")


def median_step_times(kind, layers, optimizer, jit, names, rounds, steps):
    """Median seconds per ``train_on_batch`` of each gather, rounds alternating."""
    inputs, targets = batch(kind)
    models = {}
    for name in names:
        with gather(name):
            model = build(kind, layers)
            make = keras.optimizers.Adam if optimizer == "adam" else keras.optimizers.SGD
            model.compile(make(1e-4), loss="mse", jit_compile=jit)
            for _ in range(2):  # trace, compile, warm up
                model.train_on_batch(inputs, targets)
        models[name] = model
    times = {name: [] for name in names}
    for _ in range(rounds):
        for name, model in models.items():
            start = time.perf_counter()
            for _ in range(steps):
                model.train_on_batch(inputs, targets)
            times[name].append((time.perf_counter() - start) / steps)
    return {name: statistics.median(t) for name, t in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--models", nargs="+", default=["embedding", "bert"])
    args = parser.parse_args()
    if keras.backend.backend() != "tensorflow":
        raise SystemExit("run with KERAS_BACKEND=tensorflow (JAX's gather gradient is dense)")
    print(f"table {VOCAB} x {HIDDEN}, batch {BATCH} x {LENGTH}; ms per train_on_batch, "
          f"ratio to `keras` (sparse, repeated slices: wrong for Adam)")
    for kind in args.models:
        for optimizer in ("adam", "sgd"):
            for jit in (False, True):
                names = ["keras", "dense"] if jit else ["keras", "unique", "dense"]
                t = median_step_times(kind, args.layers, optimizer, jit, names, args.rounds,
                                      args.steps)
                label = f"{kind}{f' ({args.layers} layers)' if kind == 'bert' else ''}"
                cells = "  ".join(f"{n} {t[n] * 1e3:7.1f} ms ({t[n] / t['keras']:.2f}x)"
                                  for n in names)
                print(f"{label:18s} {optimizer:4s} {'xla' if jit else 'tf.function':11s} "
                      f"{cells}", flush=True)


if __name__ == "__main__":
    main()
