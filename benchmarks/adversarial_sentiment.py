"""Adversarial training on the sentiment split: test accuracy and time per step of the same
seeded from-scratch BERT with plain fine-tuning, FGM and the gradient penalty, side by side.

Every arm builds the same model from the same seed, sees the same batches in the same order
(``text_dataset`` with a seeded shuffle) for ``--steps`` optimizer steps, and is scored on the
test split; the time per step is the wall time of ``fit`` divided by the steps (compilation
included, so use enough steps), printed with its ratio to plain fine-tuning.

    python benchmarks/adversarial_sentiment.py --data ../shared/data/sentiment.zip
"""

import argparse
import time

import keras
import numpy as np

from keraformer.data import read_labelled_texts, text_dataset
from keraformer.models import build_transformer_model
from keraformer.optimizers import AdamW, PiecewiseLinearSchedule
from keraformer.tokenizers import Tokenizer
from keraformer.training import adversarial_training

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def character_vocabulary(texts, min_count=2):
    counts = {}
    for text in texts:
        for char in text.lower():
            if not char.isspace():
                counts[char] = counts.get(char, 0) + 1
    chars = sorted(c for c, n in counts.items() if n >= min_count)
    return {token: i for i, token in enumerate(dict.fromkeys(SPECIALS + chars))}


def arm(method, epsilon, train, test, tokenizer, args):
    keras.utils.set_random_seed(args.seed)
    bert = build_transformer_model(
        vocab_size=tokenizer.vocab_size, with_pool=True, hidden_size=args.hidden,
        num_hidden_layers=args.layers, num_attention_heads=max(1, args.hidden // 32),
        intermediate_size=2 * args.hidden, max_position_embeddings=args.maxlen)
    model = keras.Model(bert.inputs, keras.layers.Dense(2, activation="softmax")(bert.output))
    schedule = PiecewiseLinearSchedule(args.learning_rate, {args.steps // 10: 1,
                                                             args.steps: 0.1})
    model.compile(AdamW(schedule, weight_decay=0.01), "sparse_categorical_crossentropy")
    if method != "none":
        adversarial_training(model, epsilon=epsilon, method=method)
    texts, labels = zip(*train)
    data = text_dataset(list(texts), list(labels), tokenizer, args.maxlen, args.batch_size,
                        shuffle=True, seed=args.seed, drop_remainder=True).repeat()
    start = time.time()
    model.fit(data, steps_per_epoch=args.steps, epochs=1, verbose=0)
    seconds = (time.time() - start) / args.steps
    texts, labels = zip(*test)
    predictions = model.predict(text_dataset(list(texts), None, tokenizer, args.maxlen,
                                             args.batch_size), verbose=0)
    return float(np.mean(predictions.argmax(-1) == np.asarray(labels))), seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--maxlen", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--fgm-epsilon", type=float, default=0.5)
    parser.add_argument("--penalty-epsilon", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    train = read_labelled_texts(args.data, "train")
    test = read_labelled_texts(args.data, "test")
    tokenizer = Tokenizer(character_vocabulary([t for t, _ in train]), do_lower_case=True)
    base = None
    for method, epsilon in (("none", None), ("fgm", args.fgm_epsilon),
                            ("gradient_penalty", args.penalty_epsilon)):
        accuracy, seconds = arm(method, epsilon, train, test, tokenizer, args)
        base = base or seconds
        print(f"{method:>16} (epsilon {epsilon}): test accuracy {accuracy:.4f}, "
              f"{seconds * 1000:.0f} ms/step ({seconds / base:.2f}x)", flush=True)


if __name__ == "__main__":
    main()
