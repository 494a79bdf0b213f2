"""Fine-tune a BERT text classifier with ``model.fit``: keraformer's quickstart.

With no arguments it trains a small BERT from scratch on an embedded English sentiment task
that this script generates (templated reviews with negation, so word order matters) and
finishes in a few minutes on 2 CPU cores. ``--data`` takes a zip or folder of
``text<TAB>label`` files (``*train*``, ``*valid*``, ``*test*``), e.g. the Chinese sentiment
corpus; ``--checkpoint`` a pretrained BERT directory (Google TF or Hugging Face), whose
``vocab.txt`` is then used.

    python examples/quickstart.py
    python examples/quickstart.py --data ../shared/data/sentiment.zip --epochs 2
    python examples/quickstart.py --checkpoint path/to/bert --data ... --maxlen 128
"""

import argparse
import collections
import os
import random
import sys
import time

import keras
import numpy as np

from keraformer.data import read_labelled_texts
from keraformer.models import build_transformer_model, load_pretrained
from keraformer.tokenizers import Tokenizer

SUBJECTS = ["the movie", "this phone", "the food", "our hotel room", "the service",
            "the book", "this laptop", "the concert", "the staff", "the coffee"]
POSITIVE = ["great", "wonderful", "excellent", "delightful", "superb", "pleasant", "amazing"]
NEGATIVE = ["terrible", "awful", "boring", "disappointing", "dreadful", "poor", "horrible"]
ADVERBS = ["really", "quite", "very", "truly", "rather", "", ""]
OPENERS = ["honestly", "overall", "to be fair", "i think", "in short", "", ""]


def embedded_review(rng):
    """One templated review and its label (1 positive); negation flips the adjective."""
    positive = rng.random() < 0.5
    negated = rng.random() < 0.4
    adjective = rng.choice(POSITIVE if positive != negated else NEGATIVE)
    words = [rng.choice(OPENERS), rng.choice(SUBJECTS), "was", "not" if negated else "",
             rng.choice(ADVERBS), adjective]
    if rng.random() < 0.3:
        words += ["and", rng.choice(SUBJECTS), "was", rng.choice(ADVERBS), adjective]
    return " ".join(w for w in words if w) + rng.choice([".", "!", " ."]), int(positive)


def embedded_dataset(seed=0, sizes=(3000, 500, 500)):
    """The embedded default: train/valid/test lists of (text, label)."""
    rng = random.Random(seed)
    return [[embedded_review(rng) for _ in range(n)] for n in sizes]


def build_vocab(texts, min_count=2):
    """A WordPiece vocabulary from training texts: frequent words plus every character."""
    words = collections.Counter(w for t in texts for w in t.lower().split())
    chars = sorted({c for t in texts for c in t.lower() if not c.isspace()})
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokens += sorted(w for w, n in words.items() if n >= min_count and w.isalpha())
    tokens += chars + ["##" + c for c in chars]
    return {token: i for i, token in enumerate(dict.fromkeys(tokens))}


def encode(tokenizer, rows, maxlen):
    """Padded ``[token_ids, segment_ids]`` and labels; counts texts cut to ``maxlen``."""
    ids = np.zeros((len(rows), maxlen), "int32")
    cut = 0
    for i, (text, _) in enumerate(rows):
        full = tokenizer.encode(text)[0]
        row = tokenizer.encode(text, maxlen=maxlen)[0]
        cut += len(full) > maxlen
        ids[i, :len(row)] = row
    labels = np.array([label for _, label in rows], "int32")
    return [ids, np.zeros_like(ids)], labels, cut


def classifier_on(encoder, classes, dropout=0.1):
    """Softmax classifier on the pooled [CLS] vector of ``encoder``."""
    x = keras.layers.Dropout(dropout)(encoder.output)
    out = keras.layers.Dense(classes, activation="softmax", name="classifier")(x)
    return keras.Model(encoder.inputs, out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="zip/folder of text<TAB>label files (default: embedded)")
    parser.add_argument("--checkpoint", help="pretrained BERT directory (Google or HF)")
    parser.add_argument("--epochs", type=int, default=3, help="passes over the training split")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--maxlen", type=int, default=32,
                        help="tokens per text, [CLS] and [SEP] included; longer texts are cut")
    parser.add_argument("--learning-rate", type=float, default=None,
                        help="AdamW learning rate (default 2e-5 with --checkpoint, else 1e-3)")
    parser.add_argument("--layers", type=int, default=2, help="layers when training from scratch")
    parser.add_argument("--hidden", type=int, default=128, help="width when training from scratch")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    keras.utils.set_random_seed(args.seed)
    start = time.time()

    if args.data:
        train, valid, test = (read_labelled_texts(args.data, split)
                              for split in ("train", "valid", "test"))
    else:
        train, valid, test = embedded_dataset(args.seed)
    print(f"data: {args.data or 'embedded default'}; train {len(train)}, valid {len(valid)}, "
          f"test {len(test)}")
    if args.checkpoint:
        vocab = os.path.join(args.checkpoint, "vocab.txt")
        tokenizer = Tokenizer(vocab, do_lower_case=True)
        encoder = load_pretrained(args.checkpoint, with_pool=True)
        learning_rate = args.learning_rate or 2e-5
    else:
        tokenizer = Tokenizer(build_vocab([t for t, _ in train]), do_lower_case=True)
        heads = max(1, args.hidden // 32)
        encoder = build_transformer_model(
            model="bert", with_pool=True, vocab_size=len(tokenizer.vocab),
            hidden_size=args.hidden, num_hidden_layers=args.layers, num_attention_heads=heads,
            intermediate_size=4 * args.hidden, max_position_embeddings=max(args.maxlen, 64))
        learning_rate = args.learning_rate or 1e-3
    classes = max(label for _, label in train) + 1
    model = classifier_on(encoder, classes)
    model.compile(keras.optimizers.AdamW(learning_rate, weight_decay=0.01),
                  "sparse_categorical_crossentropy", metrics=["accuracy"])
    (x_train, y_train, cut_train), (x_valid, y_valid, _), (x_test, y_test, cut_test) = (
        encode(tokenizer, rows, args.maxlen) for rows in (train, valid, test))
    print(f"texts longer than --maxlen {args.maxlen} tokens, cut to it: train {cut_train}, "
          f"test {cut_test}")
    model.fit(x_train, y_train, validation_data=(x_valid, y_valid), epochs=args.epochs,
              batch_size=args.batch_size, verbose=1 if sys.stdout.isatty() else 2)
    _, accuracy = model.evaluate(x_test, y_test, batch_size=args.batch_size, verbose=0)
    print(f"test accuracy: {accuracy:.4f}  ({time.time() - start:.0f} s)")
    return accuracy


if __name__ == "__main__":
    main()
