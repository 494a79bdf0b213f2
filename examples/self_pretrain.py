"""Self-pretraining: masked-language-model pretraining on the task's own training texts, then
fine-tuning, against the same model trained from scratch for the same total number of steps.

Amos, Berant and Gupta (2023, "Never Train from Scratch: Fair Comparison of Long-Sequence
Models Requires Data-Driven Priors") show that a Transformer pretrained with a denoising
objective on nothing but the task's own inputs closes most of its gap on the Long Range Arena.
This script runs that comparison with keraformer's pieces: ``mlm_dataset`` (BERT masking of
the raw training texts, labels unused), a builder with ``with_mlm=True``, then the same
backbone (weights copied by layer name) under a classification head fed by ``text_dataset``.
Both arms take the same number of optimizer steps in total (``--pretrain-steps`` +
``--finetune-steps`` against ``--pretrain-steps + --finetune-steps`` of fine-tuning), the same
batch size, model, learning-rate schedule and seed; the test accuracy and the wall time of
each arm are printed.

Tasks: ``--task sentiment --data ../shared/data/sentiment.zip`` (``text<TAB>label`` files
``*train*``, ``*valid*``, ``*test*``; a character vocabulary of the training texts), and
``--task listops``, a generated Long-Range-Arena ListOps-style task: nested prefix
expressions of ``max``/``min``/``median``/``sum mod 10`` over digits, hundreds of tokens
long, labelled with their value (10 classes), which a model can only get right by combining
tokens far apart. ``--smoke`` runs a tiny model on short generated ListOps (CI runs it;
``--smoke --task sentiment`` adds generated reviews).

    python examples/self_pretrain.py --task sentiment --data ../shared/data/sentiment.zip
    python examples/self_pretrain.py --task listops
    python examples/self_pretrain.py --smoke
"""

import argparse
import random
import time

import keras
import numpy as np

from keraformer.data import mlm_dataset, read_labelled_texts, text_dataset
from keraformer.models import build_transformer_model
from keraformer.optimizers import AdamW, PiecewiseLinearSchedule
from keraformer.tokenizers import Tokenizer

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
OPERATORS = {"a": max, "i": min, "m": lambda xs: int(np.median(xs)),
             "s": lambda xs: sum(xs) % 10}  # max, min, median, sum mod 10


# -- data -----------------------------------------------------------------------------------


def listops_expression(rng, budget, depth=0):
    """``(tokens, value)`` of a random ListOps expression of at most ``budget`` tokens."""
    if budget < 4 or depth >= 6 or (depth > 0 and rng.random() < 0.25):
        digit = rng.randrange(10)
        return [str(digit)], digit
    operator = rng.choice(sorted(OPERATORS))
    tokens, values = [operator], []
    budget -= 2
    for _ in range(rng.randint(2, 6)):
        if budget < 1:
            break
        part, value = listops_expression(rng, rng.randint(1, max(1, budget // 2)), depth + 1)
        tokens += part
        values.append(value)
        budget -= len(part)
    if not values:
        values, tokens = [0], tokens + ["0"]
    return tokens + [")"], OPERATORS[operator](values)


def listops_rows(count, length, seed):
    """``count`` ``(text, label)`` rows whose expressions hold ``length // 2`` to ``length``
    tokens (space-separated, one character each)."""
    rng = random.Random(seed)
    rows = []
    while len(rows) < count:
        tokens, value = listops_expression(rng, length)
        if len(tokens) >= length // 2:
            rows.append((" ".join(tokens), value))
    return rows


def sentiment_rows(count, seed):
    """Short templated Chinese reviews for ``--smoke``."""
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


def character_vocabulary(texts, min_count=1):
    """``{token: id}``: the special tokens, then every character seen ``min_count`` times."""
    counts = {}
    for text in texts:
        for char in text.lower():
            if not char.isspace():
                counts[char] = counts.get(char, 0) + 1
    chars = sorted(c for c, n in counts.items() if n >= min_count)
    tokens = SPECIALS + chars + ["##" + c for c in chars if c.isalnum() and c.isascii()]
    return {token: i for i, token in enumerate(dict.fromkeys(tokens))}


# -- models ---------------------------------------------------------------------------------


def backbone(vocab_size, args, **kwargs):
    return build_transformer_model(
        model="bert", vocab_size=vocab_size, hidden_size=args.hidden,
        num_hidden_layers=args.layers, num_attention_heads=max(1, args.hidden // 32),
        intermediate_size=2 * args.hidden, max_position_embeddings=args.maxlen,
        dropout_rate=0.1, **kwargs)


def classifier(vocab_size, classes, args):
    bert = backbone(vocab_size, args, with_pool=True)
    output = keras.layers.Dense(classes, activation="softmax", name="Classifier")(bert.output)
    return keras.Model(bert.inputs, output)


def optimizer(steps, learning_rate):
    schedule = PiecewiseLinearSchedule(learning_rate, {max(1, steps // 10): 1, steps: 0.1})
    return AdamW(schedule, weight_decay=0.01)


def copy_backbone(source, target):
    """Copy every weight of ``target``'s layers that ``source`` has under the same name and
    shape (the embeddings and Transformer blocks; not the MLM or classification heads)."""
    copied = 0
    names = {layer.name: layer for layer in source.layers}
    for layer in target.layers:
        twin = names.get(layer.name)
        if twin is None or not layer.weights:
            continue
        if [w.shape for w in twin.weights] == [w.shape for w in layer.weights]:
            layer.set_weights(twin.get_weights())
            copied += len(layer.weights)
    return copied


def test_accuracy(model, texts, labels, tokenizer, args):
    data = text_dataset(texts, None, tokenizer, args.maxlen, args.batch_size)
    predictions = model.predict(data, verbose=0)
    return float(np.mean(predictions.argmax(-1) == np.asarray(labels)))


def fine_tune(model, train, tokenizer, steps, args):
    texts, labels = zip(*train)
    data = text_dataset(list(texts), list(labels), tokenizer, args.maxlen, args.batch_size,
                        shuffle=True, seed=args.seed, drop_remainder=True).repeat()
    model.compile(optimizer(steps, args.learning_rate), "sparse_categorical_crossentropy")
    model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0)


def run(task, train, test, args):
    """Both arms on one task; returns ``{arm: (accuracy, seconds)}``."""
    texts = [text for text, _ in train]
    vocab = character_vocabulary(texts, 1 if args.smoke or task == "listops" else 2)
    tokenizer = Tokenizer(vocab, do_lower_case=True)
    classes = max(label for _, label in train + test) + 1
    total = args.pretrain_steps + args.finetune_steps
    test_texts, test_labels = [t for t, _ in test], [label for _, label in test]
    results = {}

    keras.utils.set_random_seed(args.seed)
    start = time.time()
    scratch = classifier(len(vocab), classes, args)
    fine_tune(scratch, train, tokenizer, total, args)
    results["from scratch"] = (test_accuracy(scratch, test_texts, test_labels, tokenizer, args),
                               time.time() - start)

    keras.utils.set_random_seed(args.seed)
    start = time.time()
    pretrained = backbone(len(vocab), args, with_mlm=True)
    pretrained.compile(optimizer(args.pretrain_steps, args.learning_rate),
                       "sparse_categorical_crossentropy")
    masked = mlm_dataset(texts, tokenizer, args.maxlen, args.batch_size, mask_rate=0.15,
                         shuffle=True, seed=args.seed, drop_remainder=True).repeat()
    history = pretrained.fit(masked, steps_per_epoch=args.pretrain_steps, epochs=1, verbose=0)
    model = classifier(len(vocab), classes, args)
    copied = copy_backbone(pretrained, model)
    fine_tune(model, train, tokenizer, args.finetune_steps, args)
    results["self-pretrained"] = (test_accuracy(model, test_texts, test_labels, tokenizer,
                                                args), time.time() - start)
    print(f"{task}: {len(train)}/{len(test)} train/test texts, {classes} classes, vocabulary "
          f"{len(vocab)}, {scratch.count_params()} parameters, {total} steps per arm of "
          f"batch {args.batch_size}; MLM loss {history.history['loss'][0]:.3f}, "
          f"{copied} weights carried over", flush=True)
    for arm, (score, seconds) in results.items():
        print(f"{task} {arm}: test accuracy {score:.4f} ({seconds:.0f} s)", flush=True)
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=["sentiment", "listops"], default=None)
    parser.add_argument("--data", help="sentiment: zip or folder with *train* and *test* files")
    parser.add_argument("--maxlen", type=int, default=None,
                        help="tokens per text (default 128 sentiment, 512 listops)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--pretrain-steps", type=int, default=None)
    parser.add_argument("--finetune-steps", type=int, default=None)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--listops-train", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="tiny model, generated data")
    args = parser.parse_args()

    if args.smoke:
        args.hidden, args.layers, args.batch_size = 16, 1, 16
        args.pretrain_steps, args.finetune_steps = 6, 6
        tasks = {"listops": (listops_rows(64, 60, 0), listops_rows(32, 60, 1), 64)}
        if args.task == "sentiment" and args.data is None:
            tasks = {"sentiment": (sentiment_rows(96, 0), sentiment_rows(32, 1), 32), **tasks}
    elif args.task == "sentiment" or (args.task is None and args.data):
        if not args.data:
            parser.error("--task sentiment needs --data (e.g. ../shared/data/sentiment.zip)")
        tasks = {"sentiment": (read_labelled_texts(args.data, "train"),
                               read_labelled_texts(args.data, "test"), args.maxlen or 128)}
    else:
        length = args.maxlen or 512
        tasks = {"listops": (listops_rows(args.listops_train, length - 2, args.seed),
                             listops_rows(500, length - 2, args.seed + 1), length)}
    for task, (train, test, maxlen) in tasks.items():
        args.maxlen = maxlen
        args.pretrain_steps = args.pretrain_steps or (300 if task == "sentiment" else 200)
        args.finetune_steps = args.finetune_steps or (300 if task == "sentiment" else 200)
        run(task, train, test, args)


if __name__ == "__main__":
    main()
