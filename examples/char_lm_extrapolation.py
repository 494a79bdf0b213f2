"""A character-level language model trained at 128 characters, its loss at 1×, 4×, 8× and 16×
that length: RoPE, NTK, ReRoPE, Leaky ReRoPE and HWFA, the shape of the ReRoPE authors' table
(Su 2023; LLaMA2-13B trained at 4k: RoPE 1.497 at 4k → 8.86 at 8k; ReRoPE-w1024 1.427 at 8k,
1.400 at 16k).

The texts are the sentiment corpus' (``sentiment.train.data`` for training, ``valid`` for
evaluation, concatenated; the ``--vocab`` most frequent characters, the rest one unknown id).
The model is ``examples/rope_extrapolation.py``'s pre-norm causal Transformer. Each length's
loss is the mean next-character cross-entropy (nats) over every position of
``--eval-tokens`` characters cut into rows of that length, so a longer row gives each
character more context. NTK's factor is ``L / 128``; ReRoPE/Leaky ReRoPE use the plain RoPE
model's weights; HWFA is its own model (local RoPE layers of ``--window`` characters, a last
full layer without positions and with ``log n`` scaling).

    python examples/char_lm_extrapolation.py --data ../shared/data/sentiment.zip

About 10 minutes of CPU time on 2 cores with the defaults (most of it training).
"""

import argparse
import collections
import time

import keras
import numpy as np

from keraformer.data import read_labelled_texts
from rope_extrapolation import build_model

ROWS = [("RoPE", "rope", {}), ("NTK", "rope", {"scaling": "ntk"}),
        ("ReRoPE", "rope", {"rerope": True}),
        ("Leaky ReRoPE", "rope", {"rerope": True, "leak": True}), ("HWFA", "hwfa", {})]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="sentiment.zip (or its folder)")
    parser.add_argument("--train-length", type=int, default=128)
    parser.add_argument("--lengths", type=int, nargs="+", default=[128, 512, 1024, 2048])
    parser.add_argument("--vocab", type=int, default=2000, help="most frequent characters kept")
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--window", type=int, default=32, help="HWFA's local window")
    parser.add_argument("--rerope-window", type=int, default=32)
    parser.add_argument("--rerope-leak", type=float, default=16.0)
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--eval-tokens", type=int, default=16384)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def character_ids(args):
    """Train and valid texts as id arrays (0: unknown character, 1..vocab: by frequency)."""
    train = "\n".join(text for text, _ in read_labelled_texts(args.data, "train"))
    valid = "\n".join(text for text, _ in read_labelled_texts(args.data, "valid"))
    common = [c for c, _ in collections.Counter(train).most_common(args.vocab)]
    index = {c: i + 1 for i, c in enumerate(common)}
    encode = lambda text: np.array([index.get(c, 0) for c in text], "int32")  # noqa: E731
    return encode(train), encode(valid)


def rows_at(ids, starts, length):
    """Inputs ``(rows, length)`` and next-character targets from ``ids`` at ``starts``."""
    windows = np.stack([ids[s:s + length + 1] for s in starts])
    return windows[:, :-1], windows[:, 1:]


def train(args, train_ids, model):
    keras.utils.set_random_seed(args.seed)
    rng = np.random.RandomState(args.seed)
    net = build_model(args, args.vocab + 1, model)
    net.compile(optimizer=keras.optimizers.Adam(1e-3),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    starts = rng.randint(0, len(train_ids) - args.train_length - 1, args.steps * args.batch)
    inputs, targets = rows_at(train_ids, starts, args.train_length)
    net.fit(inputs, targets, batch_size=args.batch, epochs=1, verbose=0, shuffle=False)
    return net.get_weights()


def loss_at(args, weights, model, valid_ids, length, **evaluation):
    """Mean next-character cross-entropy over ``eval_tokens`` characters in rows of
    ``length`` (the same characters at every length)."""
    net = build_model(args, args.vocab + 1, model, length, **evaluation)
    net.set_weights(weights)
    rows = max(1, args.eval_tokens // length)
    inputs, targets = rows_at(valid_ids, np.arange(rows) * length, length)
    logits = net.predict(inputs, batch_size=max(1, 4096 // length), verbose=0)
    logits = logits - logits.max(-1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    return float(-np.take_along_axis(log_probs, targets[..., None], -1).mean())


def main(argv=None):
    args = parse_args(argv)
    start = time.time()
    train_ids, valid_ids = character_ids(args)
    weights = {model: train(args, train_ids, model) for model in ("rope", "hwfa")}
    print(f"trained 2 models in {time.time() - start:.0f} s ({args.steps} steps of "
          f"{args.batch} × {args.train_length} characters, {len(train_ids)} training "
          f"characters; ReRoPE window {args.rerope_window}, leak {args.rerope_leak}, HWFA "
          f"window {args.window})", flush=True)
    print("| method | " + " | ".join(f"L={n}" for n in args.lengths) + " |")
    print("|" + "---|" * (len(args.lengths) + 1))
    for name, model, options in ROWS:
        cells = [loss_at(args, weights[model], model, valid_ids, n, **options)
                 for n in args.lengths]
        print(f"| {name} | " + " | ".join(f"{c:.3f}" for c in cells) + " |", flush=True)
    print(f"total {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
