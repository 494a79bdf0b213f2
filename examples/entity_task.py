"""The task of the NER and seq2seq examples, and what those four scripts share around it.

The data are generated Chinese sentences with person, place and organisation entities (no
download needed): each sentence fills a template with names drawn from fixed lists, and its
entities are ``(start, end, type)`` character spans, ``end`` inclusive (bert4keras' NER
convention). The NER examples tag them and report entity-level F1 (``entity_f1``); the
seq2seq examples list them (``entity_titles``) and report exact match. Shared around the
models: the command-line flags (``Flags``: sizes, ``--smoke``), the held-out split
(``train_test``), a small BERT trained from scratch (``small_bert``), a ``DataGenerator``
holding the tokenizer (``TokenizedBatches``), entity spans in token positions
(``token_spans``, through ``rematch``), and the seq2seq training, batched decoding with
``builder.generate`` and scoring (``train_and_score``, ``generate_titles``).
"""

import argparse
import random
import time

import keras
import numpy as np

from keraformer.data import DataGenerator, sequence_padding
from keraformer.models import build_transformer_model

TYPES = ["PER", "LOC", "ORG"]
SURNAMES = "张王李赵刘陈杨黄周吴徐孙马朱胡郭何林罗高"
GIVEN = ["伟", "芳", "娜", "敏", "静", "丽", "强", "磊", "军", "洋", "勇", "艳", "杰", "涛", "明",
         "超", "秀英", "建国", "小红", "志强", "海燕", "文博"]
PLACES = ["北京", "上海", "广州", "深圳", "杭州", "南京", "成都", "武汉", "西安", "重庆", "天津",
          "苏州", "长沙", "青岛", "厦门", "昆明", "大连", "沈阳", "哈尔滨", "乌鲁木齐"]
ORGS = ["清华大学", "人民银行", "华为公司", "腾讯公司", "中国科学院", "新华社", "国家图书馆",
        "中央电视台", "红十字会", "铁路局", "气象台", "市人民医院", "第一中学", "自然博物馆"]
TEMPLATES = [
    "{PER}在{LOC}的{ORG}工作。", "{ORG}宣布{PER}将于下月访问{LOC}。", "昨天{PER}去了{LOC}。",
    "{PER}和{PER}一起参观了{ORG}。", "来自{LOC}的{PER}加入了{ORG}。", "{LOC}今天天气很好。",
    "{ORG}在{LOC}举办了展览，{PER}到场致辞。", "据{ORG}报道，{LOC}发生了地震。",
    "{PER}说他明年要搬到{LOC}。", "我们明天在{ORG}门口见面。", "{PER}毕业于{ORG}。",
    "从{LOC}到{LOC}的高铁很快。", "这是{PER}第一次来{LOC}。", "今年的会议由{ORG}主办。",
]


def person(rng):
    return rng.choice(SURNAMES) + rng.choice(GIVEN)


def sentence(rng):
    """One generated sentence and its entity spans ``[(start, end, type), ...]``."""
    template = rng.choice(TEMPLATES)
    text, entities, i = "", [], 0
    while i < len(template):
        if template[i] == "{":
            kind = template[i + 1:i + 4]
            name = {"PER": person, "LOC": lambda r: r.choice(PLACES),
                    "ORG": lambda r: r.choice(ORGS)}[kind](rng)
            entities.append((len(text), len(text) + len(name) - 1, kind))
            text += name
            i += 5
        else:
            text += template[i]
            i += 1
    return text, entities


def sentences(count, seed):
    """``count`` generated ``(text, entities)`` pairs."""
    rng = random.Random(seed)
    return [sentence(rng) for _ in range(count)]


def characters():
    """Every character the generated sentences can hold, sorted."""
    pieces = [SURNAMES, "".join(GIVEN), "".join(PLACES), "".join(ORGS), "".join(TEMPLATES),
              "、"]  # the separator of entity_titles
    return sorted(set("".join(pieces)) - set("{}PERLOCG"))


def vocabulary():
    """A character WordPiece vocabulary ``{token: id}`` covering the generated sentences."""
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + characters()
    return {token: i for i, token in enumerate(tokens)}


def entity_f1(predicted, gold):
    """Entity-level F1 (exact span and type) of sets of ``(start, end, type)`` per sentence."""
    found = sum(len(p & g) for p, g in zip(predicted, gold))
    guessed, wanted = sum(len(p) for p in predicted), sum(len(g) for g in gold)
    return 2 * found / (guessed + wanted) if guessed + wanted else 1.0


def entity_titles(samples):
    """The seq2seq examples' task: ``(text, its entities joined by 、)`` for each sample."""
    return [(text, "、".join(text[s:e + 1] for s, e, _ in entities)) for text, entities in samples]


# -- around the models ---------------------------------------------------------------------


class Flags(argparse.ArgumentParser):
    """The command line of the examples on the generated sentences: ``--sentences``,
    ``--epochs``, the model's width (``--hidden``, or ``--d-model`` for T5), ``--layers``,
    ``--maxlen``, ``--batch-size``, with ``seq2seq`` also ``--method`` and ``--evaluate``,
    then ``--seed`` and ``--smoke``. A script adds its own flags before ``parse_args``;
    ``--smoke`` sets 160 sentences, 1 epoch, width 32, 1 layer (8 decoded sentences), and
    whatever the script passes as ``smoke`` (e.g. ``head_size=16``)."""

    def __init__(self, doc, epochs, width="hidden", seq2seq=False, **smoke):
        super().__init__(description=doc.split("\n\n")[0])
        self.add_argument("--sentences", type=int, default=3000)
        self.add_argument("--epochs", type=int, default=epochs)
        self.add_argument(f"--{width}", type=int, default=128)
        self.add_argument("--layers", type=int, default=2)
        self.add_argument("--maxlen", type=int, default=64)
        self.add_argument("--batch-size", type=int, default=32)
        if seq2seq:
            self.add_argument("--method", default="greedy", choices=["greedy", "beam"])
            self.add_argument("--evaluate", type=int, default=200, help="test sentences decoded")
            smoke = {"evaluate": 8, **smoke}
        self.add_argument("--seed", type=int, default=0)
        self.add_argument("--smoke", action="store_true", help="tiny model, seconds")
        self.smoke_sizes = {"sentences": 160, "epochs": 1, width.replace("-", "_"): 32,
                            "layers": 1, **smoke}

    def parse_args(self, args=None, namespace=None):
        parsed = super().parse_args(args, namespace)
        if parsed.smoke:
            vars(parsed).update(self.smoke_sizes)
        return parsed


class TokenizedBatches(DataGenerator):
    """A ``DataGenerator`` holding the ``tokenizer`` and ``maxlen`` that its subclass'
    ``__iter__`` encodes each sample with (bert4keras' scripts keep them in globals)."""

    def __init__(self, data, tokenizer, maxlen, batch_size):
        super().__init__(data, batch_size)
        self.tokenizer, self.maxlen = tokenizer, maxlen


def train_test(args):
    """``args.sentences`` generated ``(text, entities)`` samples (seed ``args.seed``), split
    80/20 into training and test sentences."""
    samples = sentences(args.sentences, args.seed)
    split = int(0.8 * len(samples))
    return samples[:split], samples[split:]


def small_bert(args, vocab_size, positions=None, **kwargs):
    """A BERT trained from scratch: width ``args.hidden``, ``args.layers`` layers, heads of 32
    dimensions, a 4x feed-forward layer, ``max(positions, 64)`` positions (``positions``
    defaults to ``args.maxlen``). ``kwargs`` go to ``build_transformer_model``."""
    positions = args.maxlen if positions is None else positions
    return build_transformer_model(
        model="bert", vocab_size=vocab_size, hidden_size=args.hidden,
        num_hidden_layers=args.layers, num_attention_heads=max(1, args.hidden // 32),
        intermediate_size=4 * args.hidden, max_position_embeddings=max(positions, 64), **kwargs)


def token_spans(tokenizer, text, entities, maxlen):
    """The tokens of ``text`` (cut to ``maxlen``) and its entities as token spans
    ``(first, last, type)``: ``rematch`` ties each token to its characters; an entity whose
    first or last character has no token (cut off by ``maxlen``) is left out."""
    tokens = tokenizer.tokenize(text, maxlen=maxlen)
    mapping = tokenizer.rematch(text, tokens)
    start_of = {positions[0]: i for i, positions in enumerate(mapping) if positions}
    end_of = {positions[-1]: i for i, positions in enumerate(mapping) if positions}
    spans = [(start_of[start], end_of[end], kind) for start, end, kind in entities
             if start in start_of and end in end_of]
    return tokens, spans


def generate_titles(builder, tokenizer, sources, args, **options):
    """The decoded ``builder.generate`` output for each of ``sources`` (batches of 32, inputs
    cut to ``args.maxlen``, at most 24 generated tokens, 8 with ``--smoke``, ``args.method``).
    ``options`` go to ``generate``; with ``end_id`` each row is cut before its first end id."""
    end_id = options.get("end_id")
    titles = []
    for i in range(0, len(sources), 32):
        prompts = [tokenizer.encode(s, maxlen=args.maxlen)[0] for s in sources[i:i + 32]]
        generated = builder.generate(sequence_padding(prompts), method=args.method,
                                     max_length=24 if not args.smoke else 8, **options)
        for row in np.asarray(generated).tolist():
            if end_id is not None and end_id in row:
                row = row[:row.index(end_id)]
            titles.append(tokenizer.decode(row))
    return titles


def train_and_score(builder, train, tokenizer, test_pairs, args, start, **options):
    """The seq2seq examples' training and scoring: ``builder.model`` learns from the ``train``
    batches (their targets and weights) with Adam at 1e-3 and cross-entropy for
    ``args.epochs`` epochs; then the first ``args.evaluate`` test sources are decoded
    (:func:`generate_titles`, ``options`` go to ``generate``), one example is printed, and
    the share of decoded titles equal to their targets (exact match)."""
    model = builder.model
    # the mean over the weighted (target) tokens: the loss bert4keras' CrossEntropy reported
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(
                      reduction="mean_with_sample_weight"))
    model.fit(train.forfit(), steps_per_epoch=len(train), epochs=args.epochs,
              verbose=0 if args.smoke else 2)
    test = test_pairs[:args.evaluate]
    titles = generate_titles(builder, tokenizer, [source for source, _ in test], args, **options)
    exact = np.mean([title == target for title, (_, target) in zip(titles, test)])
    print(f"example: {test[0][0]} -> {titles[0]!r} (target {test[0][1]!r})")
    print(f"test exact match {exact:.4f} on {len(test)} sentences ({args.method}), "
          f"{time.time() - start:.0f} s ({keras.backend.backend()})", flush=True)
