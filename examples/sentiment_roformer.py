"""Chinese sentiment classification with a small RoFormerV2 trained from scratch.

A character-level RoFormerV2 (rotary positions, RMS norms, no biases) is trained with
``model.fit`` on the train split of ``sentiment.zip`` (``text<TAB>label`` lines), using the
valid split to keep the best epoch, and compared on the test split with a character-unigram
TF-IDF + logistic regression baseline. Texts longer than ``--max-length`` characters are
truncated, and how many were is printed. Batches are bucketed by length (similar lengths
together, padded to a multiple of 16), so short reviews do not pay for long ones.

    python examples/sentiment_roformer.py --data ../shared/data/sentiment.zip
"""

import argparse
import collections
import os
import time

import keras
import numpy as np

from keraformer.data import read_labelled_texts
from keraformer.models import build_transformer_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAD, UNK = 0, 1


def read_split(data, split):
    """``(texts, labels)`` of the ``split`` file of ``data`` (a zip or folder of
    ``text<TAB>label`` files)."""
    rows = read_labelled_texts(data, split)
    return [text for text, _ in rows], np.array([label for _, label in rows], "int32")


def character_vocabulary(texts, min_count=2):
    """``{char: id}`` for characters seen ``min_count`` times; 0 is padding, 1 unknown."""
    counts = collections.Counter(c for text in texts for c in text)
    chars = sorted(c for c, n in counts.items() if n >= min_count)
    return {c: i + 2 for i, c in enumerate(chars)}


def encode(texts, vocab, max_length):
    """Id lists truncated to ``max_length``, and the number of texts that were truncated."""
    ids = [[vocab.get(c, UNK) for c in text[:max_length]] or [UNK] for text in texts]
    return ids, sum(len(text) > max_length for text in texts)


def length_buckets(ids, tokens=4096, max_batch=32):
    """Index batches of similar-length sequences, each at most ``tokens`` padded tokens (and
    ``max_batch`` sequences), so a batch of long texts is smaller than one of short texts."""
    order = np.argsort([len(x) for x in ids], kind="stable")
    batches, batch = [], []
    for i in order:
        width = -(-len(ids[i]) // 16) * 16
        if batch and (width * (len(batch) + 1) > tokens or len(batch) == max_batch):
            batches.append(batch)
            batch = []
        batch.append(i)
    return batches + [batch]


def bucketed_dataset(ids, labels, shuffle=False, seed=0, tokens=4096):
    """A ``tf.data`` pipeline of ``((tokens, segments), labels)`` batches from
    :func:`length_buckets`, padded to a multiple of 16 and, if ``shuffle``, in a new order
    every epoch. (tf.data only feeds ``model.fit``; the model itself is backend-agnostic.)"""
    import tensorflow as tf

    batches = length_buckets(ids, tokens)
    rng = np.random.default_rng(seed)

    def generate():
        for b in (rng.permutation(len(batches)) if shuffle else range(len(batches))):
            batch = batches[b]
            width = -(-max(len(ids[i]) for i in batch) // 16) * 16
            tokens = np.zeros((len(batch), width), "int32")
            for row, i in enumerate(batch):
                tokens[row, :len(ids[i])] = ids[i]
            yield (tokens, np.zeros_like(tokens)), labels[batch]

    matrix = tf.TensorSpec((None, None), tf.int32)
    signature = ((matrix, matrix), tf.TensorSpec((None,), tf.int32))
    return tf.data.Dataset.from_generator(generate, output_signature=signature).prefetch(2)


class EpochTimer(keras.callbacks.Callback):
    """Prints wall and CPU seconds per epoch."""

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.time(), time.process_time()

    def on_epoch_end(self, epoch, logs=None):
        print(f"epoch {epoch + 1}: {time.time() - self.start[0]:.0f}s wall, "
              f"{time.process_time() - self.start[1]:.0f}s CPU", flush=True)


@keras.saving.register_keras_serializable(package="keraformer_examples")
class MaskedMeanPooling(keras.layers.Layer):
    """Mean of the hidden states over non-padding positions: ``(b, n, d), (b, n) -> (b, d)``."""

    def call(self, hidden, token_ids):
        weights = keras.ops.cast(keras.ops.not_equal(token_ids, PAD), hidden.dtype)[..., None]
        total = keras.ops.sum(hidden * weights, axis=1)
        return total / keras.ops.maximum(keras.ops.sum(weights, axis=1), 1.0)

    def compute_output_shape(self, hidden_shape, token_ids_shape):
        return (hidden_shape[0], hidden_shape[-1])


def classifier(vocab_size, args):
    """RoFormerV2 encoder, masked mean pooling, dropout, 2-way softmax."""
    encoder = build_transformer_model(
        model="roformer_v2", vocab_size=vocab_size, hidden_size=args.hidden,
        num_hidden_layers=args.layers, num_attention_heads=args.heads,
        intermediate_size=args.hidden * 4, hidden_act="relu", hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1)
    token_ids, segment_ids = encoder.inputs
    pooled = MaskedMeanPooling(name="Pool")(encoder.output, token_ids)
    pooled = keras.layers.Dropout(0.1)(pooled)
    probs = keras.layers.Dense(2, activation="softmax", name="Classifier")(pooled)
    return keras.Model([token_ids, segment_ids], probs)


def baseline_accuracy(train, test):
    """Character-unigram TF-IDF + logistic regression test accuracy."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vectorizer = TfidfVectorizer(analyzer="char", ngram_range=(1, 1), sublinear_tf=True)
    features = vectorizer.fit_transform(train[0])
    model = LogisticRegression(C=4.0, max_iter=2000).fit(features, train[1])
    return float((model.predict(vectorizer.transform(test[0])) == test[1]).mean())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.path.join(REPO, "..", "shared", "data",
                                                       "sentiment.zip"))
    parser.add_argument("--max-length", type=int, default=512,
                        help="characters per text; longer texts are truncated (and counted)")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=128, help="RoFormerV2 width")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--batch-tokens", type=int, default=4096,
                        help="padded tokens per batch (at most 32 texts)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    keras.utils.set_random_seed(args.seed)
    start = time.time()

    splits = {s: read_split(args.data, s) for s in ("train", "valid", "test")}
    baseline = baseline_accuracy(splits["train"], splits["test"])
    print(f"baseline (char-unigram TF-IDF + logistic regression) test accuracy: "
          f"{baseline:.4f}  [{time.time() - start:.0f}s]", flush=True)

    vocab = character_vocabulary(splits["train"][0])
    data = {}
    for split, (texts, labels) in splits.items():
        ids, truncated = encode(texts, vocab, args.max_length)
        print(f"{split}: {len(texts)} texts, {truncated} truncated to {args.max_length} "
              f"characters", flush=True)
        data[split] = bucketed_dataset(ids, labels, shuffle=split == "train", seed=args.seed,
                                       tokens=args.batch_tokens)
    print(f"vocabulary: {len(vocab) + 2} ids (characters seen twice in train)")

    model = classifier(len(vocab) + 2, args)
    train_ids = encode(splits["train"][0], vocab, args.max_length)[0]
    steps = len(length_buckets(train_ids, args.batch_tokens)) * args.epochs
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0, steps, warmup_target=args.learning_rate, warmup_steps=max(steps // 20, 1))
    model.compile(keras.optimizers.AdamW(schedule, weight_decay=0.01),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    print(f"RoFormerV2: {args.layers} layers, hidden {args.hidden}, "
          f"{model.count_params():,} parameters")
    best = keras.callbacks.ModelCheckpoint("/tmp/sentiment_roformer.weights.h5",
                                           monitor="val_accuracy", save_best_only=True,
                                           save_weights_only=True)
    model.fit(data["train"], validation_data=data["valid"], epochs=args.epochs,
              callbacks=[best, EpochTimer()], verbose=2)
    model.load_weights("/tmp/sentiment_roformer.weights.h5")
    _, accuracy = model.evaluate(data["test"], verbose=0)
    print(f"RoFormerV2 test accuracy: {accuracy:.4f} (best valid epoch)")
    print(f"baseline test accuracy:   {baseline:.4f}")
    print(f"wall time: {time.time() - start:.0f}s, CPU time: {time.process_time():.0f}s "
          f"on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
