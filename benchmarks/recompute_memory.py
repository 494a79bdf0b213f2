"""Recompute benchmark: peak resident memory growth and step time of a BERT training step
(``build_transformer_model("bert", ...)`` with a pooled 2-way classifier, SGD), with and
without ``recompute=True`` (every Transformer block recomputed in the backward pass), each in
its own process (peak RSS is per process). Growth is measured over the process's peak after
the model's weights exist and one prediction ran.

Run: python benchmarks/recompute_memory.py      # BERT-base: batch 16, length 512, 12 × 768
     python benchmarks/recompute_memory.py --batch 4 --length 128 --layers 2   # quick
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
    from keraformer.models import build_transformer_model

    encoder = build_transformer_model(
        model="bert", vocab_size=args.vocab, hidden_size=args.hidden,
        num_hidden_layers=args.layers, num_attention_heads=args.hidden // 64,
        intermediate_size=4 * args.hidden, max_position_embeddings=max(512, args.length),
        with_pool=True, recompute=recompute)
    probs = keras.layers.Dense(2, activation="softmax")(encoder.output)
    model = keras.Model(encoder.inputs, probs)
    model.compile(keras.optimizers.SGD(1e-3), "sparse_categorical_crossentropy")
    return model


def child(args):
    import numpy as np
    recompute = args.child == "recompute"
    model = build(args, recompute)
    rng = np.random.default_rng(0)
    ids = rng.integers(1, args.vocab, (args.batch, args.length)).astype("int32")
    inputs, labels = [ids, np.zeros_like(ids)], rng.integers(0, 2, args.batch)
    model.predict([x[:1] for x in inputs], verbose=0)
    baseline = peak_rss_mib()
    model.train_on_batch(inputs, labels)  # traces the step
    start = time.perf_counter()
    for _ in range(args.steps):
        model.train_on_batch(inputs, labels)
    seconds = (time.perf_counter() - start) / args.steps
    print(json.dumps({"baseline_mib": baseline, "peak_mib": peak_rss_mib(), "step_s": seconds,
                      "params": model.count_params()}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=512, help="tokens per row")
    parser.add_argument("--hidden", type=int, default=768, help="BERT width (heads of 64)")
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--vocab", type=int, default=21128)
    parser.add_argument("--steps", type=int, default=2, help="timed training steps")
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
