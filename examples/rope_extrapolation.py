"""Train short, test long: RoPE length extrapolation and the methods built for it, on a local
task and on a task that needs the whole context.

A small causal Transformer (pre-norm ``MultiHeadAttention``, rotary positions as the only
position signal) is trained on ``--train-length`` tokens and evaluated, without fine-tuning,
on longer inputs. Two tasks:

- ``shift``: output, at each position ``t``, the token seen ``--shift`` places earlier (needs
  the relative position, locally);
- ``recall``: ``--pairs`` stored items (one token each, naming a key and its value) lie at
  random places among filler tokens in the first half of the row; every token of the
  second half is one of those keys and must be answered with its value (needs the whole
  context: the item may be up to ``L`` tokens back).

Rows (evaluation-time methods share the weights of the model trained without them):

- ``RoPE``; ``linear interpolation`` (Chen et al. 2023) and ``NTK`` (bloc97 2023) with
  factor ``L / train_length``; ``ReRoPE`` (relative positions clipped at
  ``--rerope-window``) and ``Leaky ReRoPE`` (compressed by ``--rerope-leak`` beyond it), Su
  2023 — all on the plain RoPE model;
- ``entropy only`` / ``NTK + entropy``: trained with logits times ``log(n)/log(train_length)``;
- ``local attention``: every layer sees ``--window`` keys (trained that way);
  ``local + log n`` adds entropy scaling;
- ``HWFA``: local layers with RoPE and a last full layer without positions, with ``log n``
  scaling (``keraformer.models.layer_plan.layer_plan("hwfa", ...)``);
- ``random positions``: trained with a sorted random subset of ``[0, max length)`` as each
  row's positions (Ruoss et al. 2023); evaluated at ``0..L−1``.

Accuracy is over the positions with a target. Fixed seeds. About 3 minutes of CPU time per
task with the defaults (15-20 minutes of wall time on 2 heavily shared cores):

    python examples/rope_extrapolation.py
    python examples/rope_extrapolation.py --tasks recall --lengths 64 256 1024
"""

import argparse
import time

import keras
import numpy as np

from keraformer.attentions import MultiHeadAttention
from keraformer.feedforward import FeedForward
from keraformer.models.layer_plan import layer_plan
from keraformer.normalization import LayerNormalization
from keraformer.positions import RandomPositions, RotaryEmbedding


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", nargs="+", default=["shift", "recall"],
                        choices=["shift", "recall"])
    parser.add_argument("--train-length", type=int, default=64, help="tokens per training row")
    parser.add_argument("--lengths", type=int, nargs="+", default=[64, 256, 1024],
                        help="evaluation lengths in tokens")
    parser.add_argument("--shift", type=int, default=8, help="shift: copy the token this far back")
    parser.add_argument("--pairs", type=int, default=8, help="recall: stored key-value pairs")
    parser.add_argument("--vocab", type=int, default=32, help="shift: distinct tokens")
    parser.add_argument("--recall-vocab", type=int, default=16,
                        help="recall: distinct keys (and values, and filler tokens)")
    parser.add_argument("--width", type=int, default=64, help="model width")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--window", type=int, default=16, help="local attention window")
    parser.add_argument("--rerope-window", type=int, default=16)
    parser.add_argument("--rerope-leak", type=float, default=16.0)
    parser.add_argument("--steps", type=int, default=400, help="training steps per model")
    parser.add_argument("--batch", type=int, default=32, help="rows per training step")
    parser.add_argument("--eval-tokens", type=int, default=8192,
                        help="tokens per evaluation length (sequences = tokens / length)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="a few steps, lengths 16 and 32")
    args = parser.parse_args(argv)
    if args.smoke:
        args.train_length, args.lengths, args.steps, args.eval_tokens = 16, [16, 32], 3, 64
        args.window = args.rerope_window = 4
        args.shift, args.pairs, args.width, args.recall_vocab = 2, 2, 16, 4
    return args


def shift_batch(rng, batch, length, args):
    """Random tokens, targets ``tokens[t - shift]`` and weights (0 where ``t < shift``)."""
    tokens = rng.randint(0, args.vocab, (batch, length)).astype("int32")
    targets = np.zeros_like(tokens)
    targets[:, args.shift:] = tokens[:, :-args.shift]
    weights = np.zeros((batch, length), "float32")
    weights[:, args.shift:] = 1.0
    return tokens, targets, weights


def recall_batch(rng, batch, length, args):
    """Queries (keys) ``[0, n)``, values ``[n, 2n)``, filler ``[2n, 3n)`` and stored items
    ``3n + key·n + value`` (``n = recall_vocab``): ``pairs`` items
    with distinct keys at random places in the first half of the row; every token of the
    second half is one of the stored keys, whose value is its target."""
    n = args.recall_vocab
    tokens = rng.randint(2 * n, 3 * n, (batch, length)).astype("int32")
    targets = np.zeros_like(tokens)
    weights = np.zeros((batch, length), "float32")
    half = length // 2
    for row in range(batch):
        keys = rng.choice(n, args.pairs, replace=False)
        values = rng.randint(0, n, args.pairs)
        places = rng.choice(half, args.pairs, replace=False)
        tokens[row, places] = 3 * n + keys * n + values
        asked = rng.randint(0, args.pairs, length - half)
        tokens[row, half:], targets[row, half:] = keys[asked], n + values[asked]
    weights[:, half:] = 1.0
    return tokens, targets, weights


TASKS = {"shift": shift_batch, "recall": recall_batch}


def vocabulary(args, task):
    """Number of token ids of ``task``."""
    return args.vocab if task == "shift" else 3 * args.recall_vocab + args.recall_vocab ** 2

# Trained models: per-layer plan and training options.
MODELS = {
    "rope": {}, "entropy": {"entropy_scaling": True}, "local": {"window": True},
    "local + log n": {"window": True, "entropy_scaling": True}, "hwfa": {"plan": "hwfa"},
    "random positions": {"random_positions": True},
}
# Rows: (name, trained model, evaluation-time options).
ROWS = [
    ("RoPE", "rope", {}), ("linear interpolation", "rope", {"scaling": "linear"}),
    ("NTK", "rope", {"scaling": "ntk"}), ("ReRoPE", "rope", {"rerope": True}),
    ("Leaky ReRoPE", "rope", {"rerope": True, "leak": True}),
    ("entropy only", "entropy", {}), ("NTK + entropy", "entropy", {"scaling": "ntk"}),
    ("local attention", "local", {}), ("local + log n", "local + log n", {}),
    ("HWFA", "hwfa", {}), ("random positions", "random positions", {}),
]


def build_model(args, vocab, model, length=None, scaling=None, rerope=False, leak=False):
    """Pre-norm causal Transformer for ``MODELS[model]`` (evaluated at ``length`` with the
    RoPE ``scaling`` or ReRoPE)."""
    options = MODELS[model]
    window = args.window if options.get("window") or options.get("plan") else None
    plan = layer_plan(options.get("plan", "uniform"), args.layers, window, rotary=True,
                      entropy_scaling=options.get("entropy_scaling", False))
    factor = max(1.0, (length or args.train_length) / args.train_length)
    tokens = keras.Input((None,), dtype="int32")
    x = keras.layers.Embedding(vocab, args.width, name="embedding")(tokens)
    positions = None
    if options.get("random_positions"):
        positions = RandomPositions(max(args.lengths), seed=args.seed, name="positions")(x)
    for i, layer in enumerate(plan):
        rotary = (RotaryEmbedding(scaling=scaling, factor=factor if scaling else 1.0)
                  if layer["rotary"] else None)
        h = LayerNormalization(name=f"attention_norm_{i}")(x)
        h = MultiHeadAttention(
            args.heads, args.width // args.heads, rotary=rotary, window=layer["window"],
            entropy_scaling=layer["entropy_scaling"], scaling_base=args.train_length,
            rerope_window=args.rerope_window if rerope and rotary else None,
            rerope_leak=args.rerope_leak if leak and rotary else None,
            name=f"attention_{i}")(h, causal=True, positions=positions)
        x = x + h
        h = LayerNormalization(name=f"ffn_norm_{i}")(x)
        x = x + FeedForward(4 * args.width, name=f"ffn_{i}")(h)
    x = LayerNormalization(name="final_norm")(x)
    return keras.Model(tokens, keras.layers.Dense(vocab, name="logits")(x))


def train(args, task, model):
    """Train ``model`` on ``task`` at ``args.train_length``; returns the trained weights."""
    keras.utils.set_random_seed(args.seed)
    rng = np.random.RandomState(args.seed)
    net = build_model(args, vocabulary(args, task), model)
    net.compile(optimizer=keras.optimizers.Adam(2e-3),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    tokens, targets, weights = TASKS[task](rng, args.steps * args.batch, args.train_length,
                                           args)
    net.fit(tokens, targets, sample_weight=weights, batch_size=args.batch, epochs=1,
            verbose=0, shuffle=False)
    return net.get_weights()


def accuracy(args, task, weights, model, length, **evaluation):
    """Accuracy at ``length`` of the trained ``weights`` under the evaluation options."""
    net = build_model(args, vocabulary(args, task), model, length, **evaluation)
    net.set_weights(weights)
    rng = np.random.RandomState(args.seed + length)
    sequences = max(1, args.eval_tokens // length)
    tokens, targets, mask = TASKS[task](rng, sequences, length, args)
    predictions = np.argmax(net.predict(tokens, batch_size=max(1, 4096 // length), verbose=0),
                            axis=-1)
    return float(((predictions == targets) * mask).sum() / mask.sum())


def table(args, task):
    """Markdown rows of every method on ``task``."""
    start = time.time()
    weights = {model: train(args, task, model) for model in MODELS}
    lines = [f"task {task}: trained {len(MODELS)} models in {time.time() - start:.0f} s "
             f"(length {args.train_length}, {args.steps} steps of {args.batch})",
             "| method | " + " | ".join(f"L={n}" for n in args.lengths) + " |",
             "|" + "---|" * (len(args.lengths) + 1)]
    print(lines[0], flush=True)
    for name, model, options in ROWS:
        cells = [accuracy(args, task, weights[model], model, n, **options)
                 for n in args.lengths]
        lines.append(f"| {name} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")
        print(lines[-1], flush=True)
    return lines


def main(argv=None):
    args = parse_args(argv)
    start = time.time()
    print(f"window {args.window}, ReRoPE window {args.rerope_window}, leak {args.rerope_leak}")
    for task in args.tasks:
        table(args, task)
    print(f"total {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
