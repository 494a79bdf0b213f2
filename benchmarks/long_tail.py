"""Long-tail benchmark: a character-embedding + mean-pooling sentiment classifier trained on
a 1:20 positive:negative subsample of the sentiment corpus, evaluated by balanced accuracy
(mean per-class recall) on the full test set, with plain CE, with LogitAdjustedLoss (Menon et
al. 2021) and with CE plus post-hoc adjust_logits.

Run: python benchmarks/long_tail.py [path/to/sentiment.zip] [--epochs 6]
"""

import argparse
import collections
import os

import keras
import numpy as np

from keraformer.data import read_labelled_texts
from keraformer.losses import LogitAdjustedLoss, adjust_logits

DEFAULT = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "sentiment.zip")
LENGTH, VOCAB = 128, 4000


def encode(texts, index):
    ids = np.zeros((len(texts), LENGTH), "int32")
    for row, text in enumerate(texts):
        codes = [index.get(ch, 1) for ch in text[:LENGTH]]
        ids[row, :len(codes)] = codes
    return ids


def balanced_accuracy(labels, predictions):
    return float(np.mean([np.mean(predictions[labels == c] == c) for c in np.unique(labels)]))


def classifier(seed):
    keras.utils.set_random_seed(seed)
    ids = keras.Input((LENGTH,), dtype="int32")
    x = keras.layers.Embedding(VOCAB, 64, mask_zero=True)(ids)
    x = keras.layers.GlobalAveragePooling1D()(x)
    x = keras.layers.Dense(64, activation="relu")(x)
    return keras.Model(ids, keras.layers.Dense(2)(x))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", nargs="?", default=DEFAULT, help="the sentiment corpus zip")
    parser.add_argument("--epochs", type=int, default=6, help="training epochs per loss")
    parser.add_argument("--ratio", type=int, default=20,
                        help="negatives per positive kept in the training split")
    args = parser.parse_args()
    train, test = read_labelled_texts(args.data, "train"), read_labelled_texts(args.data, "test")
    rng = np.random.default_rng(0)
    negatives = [r for r in train if r[1] == 0]
    positives = [r for r in train if r[1] == 1]
    keep = rng.choice(len(positives), len(negatives) // args.ratio, replace=False)
    train = negatives + [positives[i] for i in keep]
    counts = collections.Counter(ch for text, _ in train for ch in text)
    index = {ch: i + 2 for i, (ch, _) in enumerate(counts.most_common(VOCAB - 2))}
    x_train, y_train = encode([t for t, _ in train], index), np.array([l for _, l in train])
    x_test, y_test = encode([t for t, _ in test], index), np.array([l for _, l in test])
    priors = np.bincount(y_train, minlength=2)
    print(f"train: {priors[0]} negative, {priors[1]} positive; test: {np.bincount(y_test)}")

    results = {}
    for name, loss in [("plain CE", keras.losses.SparseCategoricalCrossentropy(from_logits=True)),
                       ("LogitAdjustedLoss", LogitAdjustedLoss(priors))]:
        model = classifier(0)
        model.compile(keras.optimizers.Adam(2e-3), loss)
        model.fit(x_train, y_train, batch_size=64, epochs=args.epochs, verbose=0)
        logits = model.predict(x_test, batch_size=256, verbose=0)
        results[name] = balanced_accuracy(y_test, logits.argmax(-1))
        if name == "plain CE":
            adjusted = keras.ops.convert_to_numpy(adjust_logits(logits, priors))
            results["CE + post-hoc adjust_logits"] = balanced_accuracy(y_test, adjusted.argmax(-1))
    for name, value in results.items():
        print(f"{name:30s} balanced test accuracy {value:.4f}")


if __name__ == "__main__":
    main()
