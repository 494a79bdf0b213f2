"""DeepNorm against post-LN and pre-LN as depth grows (Wang et al. 2022, "DeepNet: Scaling
Transformers to 1,000 Layers").

Narrow causal Transformers (``TransformerBlock`` with RoPE, ``--width`` features) of depth
6, 24 and 96 learn the ``shift`` task of ``examples/rope_extrapolation.py`` (output the token
``--shift`` places back) with Adam at a constant learning rate and no warm-up, from the same
seed, in each normalisation:

- ``post``: ``x ← LN(x + G(x))`` (BERT);
- ``pre``: ``x ← x + G(LN(x))`` and a final LN (GPT-2);
- ``deepnorm``: ``x ← LN(α·x + G(x))`` with the feed-forward, value and output projections
  initialised Xavier-normal times ``β``; ``α = (2N)^¼``, ``β = (8N)^-¼`` for a stack of ``N``
  decoder layers (``keraformer.normalization.deepnorm_constants``).

Reported per depth and normalisation: the first update's change of the model output, the
mean over tokens of ``‖F(x; θ₁) − F(x; θ₀)‖`` for the last hidden state (the quantity the
paper bounds: post-LN's grows with depth, DeepNorm's stays ``O(1)``), the mean training loss
per target token (Keras' running mean over the run, read over its last tenth of steps), and
the accuracy on held-out rows after training (chance is ``1/vocab``).

    python examples/deepnorm_depth.py
    python examples/deepnorm_depth.py --depths 6 24 --steps 150

About 15 minutes of CPU time on 2 cores with the defaults (depth 96 dominates).
"""

import argparse
import time

import keras
import numpy as np

from keraformer.models.blocks import TransformerBlock
from keraformer.normalization import LayerNormalization, deepnorm_constants
from keraformer.positions import RotaryEmbedding

NORMS = ("post", "pre", "deepnorm")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--depths", type=int, nargs="+", default=[6, 24, 96])
    parser.add_argument("--norms", nargs="+", default=list(NORMS), choices=NORMS)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--length", type=int, default=32)
    parser.add_argument("--shift", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=16)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def shift_rows(rng, rows, args):
    tokens = rng.randint(0, args.vocab, (rows, args.length)).astype("int32")
    targets = np.zeros_like(tokens)
    targets[:, args.shift:] = tokens[:, :-args.shift]
    weights = np.zeros(tokens.shape, "float32")
    weights[:, args.shift:] = 1.0
    return tokens, targets, weights


def build(args, depth, norm):
    """``(model, hidden)``: logits and the last hidden state of a ``depth``-block stack."""
    deepnorm = deepnorm_constants(decoder_layers=depth)["decoder"] if norm == "deepnorm" else None
    tokens = keras.Input((args.length,), dtype="int32")
    x = keras.layers.Embedding(args.vocab, args.width)(tokens)
    for i in range(depth):
        x = TransformerBlock(args.heads, args.width // args.heads, 2 * args.width,
                             norm=norm, deepnorm=deepnorm, rotary=RotaryEmbedding(),
                             kernel_initializer="glorot_normal", name=f"block_{i}")(
            x, causal=True)
    if norm == "pre":
        x = LayerNormalization(name="final_norm")(x)
    logits = keras.layers.Dense(args.vocab, name="logits")(x)
    return keras.Model(tokens, logits), keras.Model(tokens, x)


def run(args, depth, norm):
    """First-update output change, final training loss and held-out accuracy."""
    keras.utils.set_random_seed(args.seed)
    rng = np.random.RandomState(args.seed)
    model, hidden = build(args, depth, norm)
    model.compile(optimizer=keras.optimizers.Adam(args.learning_rate),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    tokens, targets, weights = shift_rows(rng, args.steps * args.batch, args)
    probe = shift_rows(np.random.RandomState(args.seed + 1), 64, args)
    before = hidden.predict(probe[0], verbose=0)
    first = slice(0, args.batch)
    model.fit(tokens[first], targets[first], sample_weight=weights[first],
              batch_size=args.batch, verbose=0, shuffle=False)
    change = float(np.linalg.norm(hidden.predict(probe[0], verbose=0) - before, axis=-1).mean())
    last = LastLosses(max(1, args.steps // 10))
    model.fit(tokens[args.batch:], targets[args.batch:], sample_weight=weights[args.batch:],
              batch_size=args.batch, verbose=0, shuffle=False, callbacks=[last])
    predictions = np.argmax(model.predict(probe[0], verbose=0), -1)
    accuracy = float(((predictions == probe[1]) * probe[2]).sum() / probe[2].sum())
    per_target = args.length / (args.length - args.shift)  # Keras averages over every token
    return change, float(np.mean(last.losses)) * per_target, accuracy


class LastLosses(keras.callbacks.Callback):
    """Keeps the training losses of the last ``count`` batches (``losses``)."""

    def __init__(self, count):
        super().__init__()
        self.count, self.losses = count, []

    def on_train_batch_end(self, batch, logs=None):
        self.losses = (self.losses + [float(logs["loss"])])[-self.count:]


def main(argv=None):
    args = parse_args(argv)
    start = time.time()
    print(f"width {args.width}, {args.heads} heads, Adam {args.learning_rate} without warm-up, "
          f"{args.steps} steps of {args.batch} × {args.length}; shift {args.shift}, vocab "
          f"{args.vocab} (chance accuracy {1 / args.vocab:.3f}, loss {np.log(args.vocab):.3f})")
    print("| depth | norm | first-update ‖ΔF‖ | mean training loss | accuracy |")
    print("|---|---|---|---|---|")
    for depth in args.depths:
        for norm in args.norms:
            change, loss, accuracy = run(args, depth, norm)
            print(f"| {depth} | {norm} | {change:.3f} | {loss:.3f} | {accuracy:.3f} |",
                  flush=True)
    print(f"total {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
