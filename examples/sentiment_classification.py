"""Sentiment classification the bert4keras way: Tokenizer, DataGenerator, model.fit.

A bert4keras classification script ported by its imports (see
docs/migrating-from-bert4keras.md): texts are encoded with ``Tokenizer.encode(text,
maxlen=...)``, batched by a ``DataGenerator`` subclass that pads each batch to its own longest
text with ``sequence_padding``, and fed to ``model.fit(train.forfit(),
steps_per_epoch=len(train))``. The classifier is the ``[CLS]`` vector of a BERT
(``with_pool=True``) and a softmax layer, trained with Adam under a piecewise-linear learning
rate (warm-up, then decay); the epoch with the best validation accuracy is kept and scored on
the test split.

``--data`` is a zip or folder of ``text<TAB>label`` lines in files named ``*train*``,
``*valid*``, ``*test*`` (e.g. the Chinese sentiment corpus). With ``--checkpoint DIR`` a
pretrained BERT and its ``vocab.txt`` are used; otherwise a small BERT is trained from scratch
on a character vocabulary of the training texts. ``--smoke`` runs a tiny model on generated
texts in seconds (CI runs it).

    python examples/sentiment_classification.py --data ../shared/data/sentiment.zip
    python examples/sentiment_classification.py --smoke
"""

import argparse
import collections
import os
import random
import time

import keras
import numpy as np

from keraformer.data import DataGenerator, read_labelled_texts, sequence_padding
from keraformer.models import build_transformer_model, load_pretrained
from keraformer.optimizers import PiecewiseLinearSchedule
from keraformer.tokenizers import Tokenizer

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def generated_reviews(count, seed):
    """Short templated Chinese reviews for ``--smoke``: a subject, maybe a negation, a verdict."""
    rng = random.Random(seed)
    subjects = ["这个手机", "酒店房间", "服务", "这本书", "电影", "饭菜", "快递"]
    good, bad = ["很好", "不错", "满意", "喜欢", "推荐"], ["很差", "失望", "糟糕", "难吃", "太慢"]
    rows = []
    for _ in range(count):
        label = rng.random() < 0.5
        negated = rng.random() < 0.3
        verdict = rng.choice(good if label != negated else bad)
        rows.append((rng.choice(subjects) + ("不是" if negated else "") + verdict + "。",
                     int(label)))
    return rows


def character_vocabulary(texts, min_count):
    """``{token: id}``: the special tokens, then every character seen ``min_count`` times,
    each also as a ``##`` continuation so that Latin words split into characters."""
    counts = collections.Counter(c for text in texts for c in text.lower() if not c.isspace())
    chars = sorted(c for c, n in counts.items() if n >= min_count)
    tokens = SPECIALS + chars + ["##" + c for c in chars if c.isalnum() and c.isascii()]
    return {token: i for i, token in enumerate(dict.fromkeys(tokens))}


class SentimentBatches(DataGenerator):
    """bert4keras' ``data_generator``: ``[token_ids, segment_ids], labels`` per batch, padded
    to the batch's longest text."""

    def __init__(self, data, tokenizer, maxlen, batch_size):
        super().__init__(data, batch_size)
        self.tokenizer, self.maxlen = tokenizer, maxlen

    def __iter__(self, random=False):
        token_ids, segment_ids, labels = [], [], []
        for is_end, (text, label) in self.sample(random):
            ids, segments = self.tokenizer.encode(text, maxlen=self.maxlen)
            token_ids.append(ids)
            segment_ids.append(segments)
            labels.append([label])
            if len(token_ids) == self.batch_size or is_end:
                # lengths rounded up to a multiple of 16: fewer shapes for JAX to compile
                yield [sequence_padding(token_ids, pad_to_multiple_of=16),
                       sequence_padding(segment_ids, pad_to_multiple_of=16)], \
                    sequence_padding(labels)
                token_ids, segment_ids, labels = [], [], []


def accuracy(model, batches):
    """Accuracy of ``model`` over ``batches`` (in order)."""
    probabilities = model.predict(batches.fortest(), steps=len(batches), verbose=0)
    labels = np.array([label for _, label in batches.data])
    return float(np.mean(probabilities.argmax(-1) == labels))


class Evaluator(keras.callbacks.Callback):
    """Validation accuracy after each epoch; keeps the best weights (as bert4keras' examples)."""

    def __init__(self, valid):
        super().__init__()
        self.valid, self.best, self.best_weights = valid, -1.0, None

    def on_epoch_end(self, epoch, logs=None):
        score = accuracy(self.model, self.valid)
        if score > self.best:
            self.best, self.best_weights = score, self.model.get_weights()
        print(f"epoch {epoch + 1}: valid accuracy {score:.4f} (best {self.best:.4f})",
              flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="zip or folder with *train*, *valid*, *test* files")
    parser.add_argument("--checkpoint", help="pretrained BERT directory (with vocab.txt)")
    parser.add_argument("--maxlen", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--learning-rate", type=float, default=None,
                        help="peak learning rate (default 2e-5 pretrained, 5e-4 from scratch)")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="tiny model on generated texts")
    args = parser.parse_args()
    keras.utils.set_random_seed(args.seed)
    start = time.time()

    if args.smoke:
        splits = [generated_reviews(n, args.seed + i) for i, n in enumerate((96, 32, 32))]
        args.maxlen, args.epochs, args.hidden, args.layers, args.batch_size = 16, 1, 16, 1, 16
    elif args.data:
        splits = [read_labelled_texts(args.data, split) for split in ("train", "valid", "test")]
    else:
        parser.error("pass --data (e.g. ../shared/data/sentiment.zip) or --smoke")
    train, valid, test = splits

    if args.checkpoint:
        tokenizer = Tokenizer(os.path.join(args.checkpoint, "vocab.txt"), do_lower_case=True)
        bert = load_pretrained(args.checkpoint, with_pool=True)
        learning_rate = args.learning_rate or 2e-5
    else:
        vocab = character_vocabulary([text for text, _ in train], 1 if args.smoke else 2)
        tokenizer = Tokenizer(vocab, do_lower_case=True)
        bert = build_transformer_model(
            model="bert", with_pool=True, vocab_size=len(vocab), hidden_size=args.hidden,
            num_hidden_layers=args.layers, num_attention_heads=max(1, args.hidden // 32),
            intermediate_size=4 * args.hidden, max_position_embeddings=max(args.maxlen, 16))
        learning_rate = args.learning_rate or 5e-4
    output = keras.layers.Dropout(0.1)(bert.output)
    output = keras.layers.Dense(2, activation="softmax")(output)
    model = keras.Model(bert.inputs, output)

    train_batches = SentimentBatches(train, tokenizer, args.maxlen, args.batch_size)
    valid_batches = SentimentBatches(valid, tokenizer, args.maxlen, args.batch_size)
    test_batches = SentimentBatches(test, tokenizer, args.maxlen, args.batch_size)
    total = len(train_batches) * args.epochs
    schedule = PiecewiseLinearSchedule(learning_rate, {max(1, total // 10): 1, total: 0.1})
    model.compile(optimizer=keras.optimizers.Adam(schedule),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    cut = sum(len(tokenizer.encode(text)[0]) > args.maxlen for text, _ in train)
    print(f"{len(train)}/{len(valid)}/{len(test)} texts, vocabulary {tokenizer.vocab_size}, "
          f"{model.count_params()} parameters, {cut} training texts cut to {args.maxlen} "
          f"tokens, backend {keras.backend.backend()}", flush=True)

    evaluator = Evaluator(valid_batches)
    model.fit(train_batches.forfit(), steps_per_epoch=len(train_batches), epochs=args.epochs,
              callbacks=[evaluator], verbose=2 if not args.smoke else 0)
    model.set_weights(evaluator.best_weights)
    score = accuracy(model, test_batches)
    print(f"test accuracy {score:.4f} (best valid {evaluator.best:.4f}), "
          f"{time.time() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
