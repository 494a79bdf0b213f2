"""Recompute benchmark: peak resident memory growth and step time of a BERT-like training step
built from keraformer layers, with and without ``recompute_grad`` on every block, each in its
own process (peak RSS is per process).

Run: python benchmarks/recompute_memory.py [--batch 16 --length 512 --hidden 768 --layers 12]
The defaults are scaled down (batch 8, length 256, hidden 256, 4 layers) to finish in minutes
on 2 CPU cores; pass the BERT-base sizes on a bigger machine.
"""

import argparse
import json
import resource
import subprocess
import sys
import time


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def build(args, recompute):
    import keras
    from keraformer.attentions import MultiHeadAttention
    from keraformer.feedforward import FeedForward
    from keraformer.masks import AttentionMask
    from keraformer.normalization import LayerNormalization
    from keraformer.optimizers import recompute_grad

    ids = keras.Input((args.length,), dtype="int32")
    mask = AttentionMask("padding")(ids)
    x = keras.layers.Embedding(args.vocab, args.hidden)(ids)
    for _ in range(args.layers):
        attention = MultiHeadAttention(args.hidden // 64, 64)
        feed_forward = FeedForward(4 * args.hidden)
        norm_1, norm_2 = LayerNormalization(), LayerNormalization()

        def block(h, mask, attention=attention, feed_forward=feed_forward, norm_1=norm_1,
                  norm_2=norm_2):
            h = norm_1(keras.layers.Add()([h, attention(h, mask=mask)]))
            return norm_2(keras.layers.Add()([h, feed_forward(h)]))
        x = recompute_grad(block)(x, mask) if recompute else block(x, mask)
    logits = keras.layers.Dense(args.vocab)(x)
    model = keras.Model(ids, logits)
    model.compile(keras.optimizers.SGD(1e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def child(args):
    import numpy as np
    recompute = args.child == "recompute"
    model = build(args, recompute)
    rng = np.random.default_rng(0)
    ids = rng.integers(1, args.vocab, (args.batch, args.length)).astype("int32")
    model.predict(ids[:1], verbose=0)
    baseline = peak_rss_mib()
    model.train_on_batch(ids, ids)  # traces the step
    start = time.perf_counter()
    for _ in range(args.steps):
        model.train_on_batch(ids, ids)
    seconds = (time.perf_counter() - start) / args.steps
    print(json.dumps({"baseline_mib": baseline, "peak_mib": peak_rss_mib(), "step_s": seconds,
                      "params": model.count_params()}))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--child", choices=["plain", "recompute"])
    args = parser.parse_args()
    if args.child:
        return child(args)
    results = {}
    for mode in ("plain", "recompute"):
        out = subprocess.run([sys.executable, __file__, "--child", mode] + sys.argv[1:],
                             capture_output=True, text=True, check=True).stdout
        results[mode] = json.loads(out.strip().splitlines()[-1])
        r = results[mode]
        print(f"{mode:10s} params {r['params'] / 1e6:.1f}M  baseline {r['baseline_mib']:.0f} MiB"
              f"  peak {r['peak_mib']:.0f} MiB  growth {r['peak_mib'] - r['baseline_mib']:.0f}"
              f" MiB  step {r['step_s']:.2f} s")
    growth = {m: r["peak_mib"] - r["baseline_mib"] for m, r in results.items()}
    print(f"recompute/plain: memory growth {growth['recompute'] / growth['plain']:.3f}x, "
          f"step time {results['recompute']['step_s'] / results['plain']['step_s']:.3f}x "
          f"(batch {args.batch}, length {args.length}, hidden {args.hidden}, "
          f"{args.layers} layers)")


if __name__ == "__main__":
    main()
