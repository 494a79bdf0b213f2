"""RoPE length extrapolation: train at one length, test at longer ones, with and without scaling.

A small causal Transformer (pre-norm ``MultiHeadAttention`` with rotary positions, no other
position signal) learns to output, at each position ``t``, the token seen ``--shift`` places
earlier, which needs the relative position. It is trained on sequences of ``--train-length``
tokens and evaluated, without any fine-tuning, on longer ones with:

- plain RoPE;
- linear position interpolation (Chen et al. 2023): ``RotaryEmbedding(scaling="linear",
  factor=L / train_length)``;
- NTK-aware base scaling (bloc97 2023): ``scaling="ntk"`` with the same factor;
- NTK plus entropy-invariant attention scaling (Su 2021): logits times
  ``log(n) / log(train_length)`` for ``n`` visible keys. The scale has to be in place during
  training too, so this row (and "entropy only") uses a second model trained with it.

The factor is chosen per evaluation length ``L`` (``1`` at the training length). Accuracy is
over every position that has a token ``shift`` places back. Fixed seeds; about 2.5 minutes
of CPU time with the defaults (2 CPU cores):

    python examples/rope_extrapolation.py
    python examples/rope_extrapolation.py --steps 800 --eval-tokens 16384 --lengths 64 256 1024
"""

import argparse
import time

import keras
import numpy as np

from keraformer.attentions import MultiHeadAttention
from keraformer.feedforward import FeedForward
from keraformer.normalization import LayerNormalization
from keraformer.positions import RotaryEmbedding


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train-length", type=int, default=64, help="tokens per training row")
    parser.add_argument("--lengths", type=int, nargs="+", default=[64, 256, 1024],
                        help="evaluation lengths in tokens")
    parser.add_argument("--shift", type=int, default=8, help="copy the token this far back")
    parser.add_argument("--vocab", type=int, default=32, help="distinct random tokens")
    parser.add_argument("--width", type=int, default=64, help="model width")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=400, help="training steps per model")
    parser.add_argument("--batch", type=int, default=32, help="rows per training step")
    parser.add_argument("--eval-tokens", type=int, default=8192,
                        help="tokens per evaluation length (sequences = tokens / length)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def shifted_copy_batch(rng, batch, length, vocab, shift):
    """Random tokens, targets ``tokens[t - shift]`` and weights (0 where ``t < shift``)."""
    tokens = rng.randint(0, vocab, (batch, length)).astype("int32")
    targets = np.zeros_like(tokens)
    targets[:, shift:] = tokens[:, :-shift]
    weights = np.zeros((batch, length), "float32")
    weights[:, shift:] = 1.0
    return tokens, targets, weights


def build_model(args, rotary, entropy_scaling):
    """Pre-norm causal Transformer whose only position signal is ``rotary``."""
    tokens = keras.Input((None,), dtype="int32")
    x = keras.layers.Embedding(args.vocab, args.width, name="embedding")(tokens)
    for i in range(args.layers):
        h = LayerNormalization(name=f"attention_norm_{i}")(x)
        h = MultiHeadAttention(args.heads, args.width // args.heads, rotary=rotary,
                               entropy_scaling=entropy_scaling, scaling_base=args.train_length,
                               name=f"attention_{i}")(h, causal=True)
        x = x + h
        h = LayerNormalization(name=f"ffn_norm_{i}")(x)
        x = x + FeedForward(4 * args.width, name=f"ffn_{i}")(h)
    x = LayerNormalization(name="final_norm")(x)
    logits = keras.layers.Dense(args.vocab, name="logits")(x)
    return keras.Model(tokens, logits)


def train(args, entropy_scaling):
    """Train at ``args.train_length`` with plain RoPE; returns the trained weights."""
    keras.utils.set_random_seed(args.seed)
    rng = np.random.RandomState(args.seed)
    model = build_model(args, RotaryEmbedding(), entropy_scaling)
    model.compile(optimizer=keras.optimizers.Adam(2e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    tokens, targets, weights = shifted_copy_batch(rng, args.steps * args.batch,
                                                  args.train_length, args.vocab, args.shift)
    model.fit(tokens, targets, sample_weight=weights, batch_size=args.batch, epochs=1,
              verbose=0, shuffle=False)
    return model.get_weights()


def accuracy(args, weights, rotary, entropy_scaling, length):
    """Shifted-copy accuracy at ``length`` of the trained weights under ``rotary``."""
    model = build_model(args, rotary, entropy_scaling)
    model.set_weights(weights)
    rng = np.random.RandomState(args.seed + length)
    sequences = max(1, args.eval_tokens // length)
    tokens, targets, mask = shifted_copy_batch(rng, sequences, length, args.vocab, args.shift)
    batch = max(1, 4096 // length)
    predictions = np.argmax(model.predict(tokens, batch_size=batch, verbose=0), axis=-1)
    return float(((predictions == targets) * mask).sum() / mask.sum())


def rotary_for(method, length, train_length):
    """The evaluation-time rotary layer of ``method`` at input ``length``."""
    factor = max(1.0, length / train_length)
    if method in ("RoPE", "entropy only"):
        return RotaryEmbedding()
    if method == "linear interpolation":
        return RotaryEmbedding(scaling="linear", factor=factor)
    return RotaryEmbedding(scaling="ntk", factor=factor)


def main():
    args = parse_args()
    start = time.time()
    weights = {False: train(args, False), True: train(args, True)}
    print(f"trained two models in {time.time() - start:.0f} s "
          f"(length {args.train_length}, {args.steps} steps of {args.batch})")
    methods = [("RoPE", False), ("linear interpolation", False), ("NTK", False),
               ("entropy only", True), ("NTK + entropy", True)]
    header = "| method | " + " | ".join(f"L={n}" for n in args.lengths) + " |"
    print(header)
    print("|" + "---|" * (len(args.lengths) + 1))
    for method, entropy in methods:
        cells = [accuracy(args, weights[entropy], rotary_for(method, n, args.train_length),
                          entropy, n) for n in args.lengths]
        print(f"| {method} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")
    print(f"total {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
