"""Optimizer state and step time: keraformer AdamW(accumulation_steps=4) (accumulation folded
into the moments) vs keras.optimizers.AdamW(gradient_accumulation_steps=4) (extra accumulators),
on variables shaped like BERT-base (12 layers, hidden 768, vocab 21128, ~102M parameters).

Run: python benchmarks/optimizer_memory.py [--layers 12] [--steps 8]
"""

import argparse
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


def time_steps(optimizer, variables, grads, steps):
    optimizer.apply(grads, variables)  # build + warm up
    start = time.perf_counter()
    for _ in range(steps):
        optimizer.apply(grads, variables)
    return (time.perf_counter() - start) / steps


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    shapes = bert_base_shapes(args.layers)
    rng = np.random.default_rng(0)
    grads = [keras.ops.convert_to_tensor(rng.standard_normal(s, dtype="float32") * 1e-3)
             for s in shapes]
    params = sum(int(np.prod(s)) for s in shapes)
    print(f"{len(shapes)} variables, {params / 1e6:.1f}M parameters "
          f"({params * 4 / 2**20:.0f} MiB of float32 weights), backend {keras.backend.backend()}")
    results = {}
    for name, make in [("keraformer AdamW(accumulation_steps=4)",
                        lambda: AdamW(1e-4, accumulation_steps=4)),
                       ("keras AdamW(gradient_accumulation_steps=4)",
                        lambda: keras.optimizers.AdamW(1e-4, gradient_accumulation_steps=4))]:
        variables = [keras.Variable(np.zeros(s, "float32")) for s in shapes]
        optimizer = make()
        seconds = time_steps(optimizer, variables, grads, args.steps)
        results[name] = (state_bytes(optimizer), seconds)
        print(f"{name:45s} state {results[name][0] / 2**20:8.1f} MiB   "
              f"micro-step {seconds * 1e3:8.1f} ms")
        del variables, optimizer
    (ours_b, ours_t), (keras_b, keras_t) = results.values()
    print(f"ratio keraformer/keras: memory {ours_b / keras_b:.3f}x, step time "
          f"{ours_t / keras_t:.3f}x")


if __name__ == "__main__":
    main()
