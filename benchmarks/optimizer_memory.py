"""Optimizer state and step time: keraformer AdamW(accumulation_steps=4) (accumulation folded
into the moments) vs keras.optimizers.AdamW(gradient_accumulation_steps=4) (extra accumulators),
on variables shaped like BERT-base (12 layers, hidden 768, vocab 21128, ~102M parameters).

Step times are medians over alternating rounds of one 4-step cycle each, in the three ways
``model.fit`` can run the optimizer: eagerly, in a ``tf.function`` and XLA-compiled.

Run: python benchmarks/optimizer_memory.py [--layers 12] [--rounds 5] [--modes eager function xla]
"""

import argparse
import statistics
import time

import keras
import numpy as np

from keraformer.optimizers import AdamW


def bert_base_shapes(layers, hidden=768, vocab=21128, intermediate=3072, positions=512):
    shapes = [(vocab, hidden), (positions, hidden), (2, hidden), (hidden,), (hidden,)]
    for _ in range(layers):
        shapes += [(hidden, hidden), (hidden,)] * 4          # query, key, value, output
        shapes += [(hidden,), (hidden,)]                     # attention LayerNorm
        shapes += [(hidden, intermediate), (intermediate,), (intermediate, hidden), (hidden,)]
        shapes += [(hidden,), (hidden,)]                     # feed-forward LayerNorm
    return shapes + [(hidden, hidden), (hidden,)]            # pooler


def state_bytes(optimizer):
    return sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in optimizer.variables)


def compiled_apply(optimizer, grads, weights, mode):
    """``optimizer.apply(grads, weights)`` as ``model.fit`` runs it: eagerly, in a
    ``tf.function`` (the TF trainer's default) or XLA-compiled (``jit_compile=True``)."""
    optimizer.build(weights)
    if mode == "eager":
        return lambda: optimizer.apply(grads, weights)
    import tensorflow as tf
    return tf.function(lambda: optimizer.apply(grads, weights), jit_compile=mode == "xla")


def median_step_times(optimizers, variables, grads, mode, rounds, steps):
    """Median seconds per micro-step of each optimizer; rounds alternate between them so
    load changes on a busy machine hit both alike. ``steps`` is a whole number of cycles."""
    applies = [compiled_apply(o, grads, w, mode) for o, w in zip(optimizers, variables)]
    for apply in applies:
        for _ in range(steps):  # trace and warm up
            apply()
    times = [[] for _ in optimizers]
    for _ in range(rounds):
        for apply, weights, record in zip(applies, variables, times):
            start = time.perf_counter()
            for _ in range(steps):
                apply()
            float(keras.ops.convert_to_numpy(weights[-1][0]))  # wait for the last update
            record.append((time.perf_counter() - start) / steps)
    return [statistics.median(t) for t in times]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--modes", nargs="+", default=["eager", "function", "xla"])
    args = parser.parse_args()
    shapes = bert_base_shapes(args.layers)
    rng = np.random.default_rng(0)
    grads = [keras.ops.convert_to_tensor(rng.standard_normal(s, dtype="float32") * 1e-3)
             for s in shapes]
    params = sum(int(np.prod(s)) for s in shapes)
    print(f"{len(shapes)} variables, {params / 1e6:.1f}M parameters "
          f"({params * 4 / 2**20:.0f} MiB of float32 weights), backend {keras.backend.backend()}")
    names = ["keraformer AdamW(accumulation_steps=4)", "keras AdamW(gradient_accumulation_steps=4)"]
    makers = [lambda: AdamW(1e-4, accumulation_steps=4),
              lambda: keras.optimizers.AdamW(1e-4, gradient_accumulation_steps=4)]
    for mode in args.modes:
        optimizers = [make() for make in makers]
        variables = [[keras.Variable(np.zeros(s, "float32")) for s in shapes] for _ in makers]
        seconds = median_step_times(optimizers, variables, grads, mode, args.rounds, steps=4)
        sizes = [state_bytes(o) for o in optimizers]
        print(f"\nmode {mode}:")
        for name, size, step in zip(names, sizes, seconds):
            print(f"  {name:45s} state {size / 2**20:8.1f} MiB   micro-step {step * 1e3:8.1f} ms")
        print(f"  ratio keraformer/keras: memory {sizes[0] / sizes[1]:.3f}x, "
              f"micro-step time {seconds[0] / seconds[1]:.3f}x")
        del optimizers, variables


if __name__ == "__main__":
    main()
