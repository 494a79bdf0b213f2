"""Sequence-to-sequence with a UniLM BERT and ``builder.generate``, the bert4keras way.

A port of bert4keras' UniLM title-generation script by its imports: source and target are
encoded as one pair, ``Tokenizer.encode(source, target, maxlen=...)`` (segment 0, then 1),
and a BERT with ``application="unilm"`` (bidirectional over the source, causal over the
target) and its MLM head learns to predict each target token; the loss weights are the
segment ids shifted by one, so only target tokens are scored. Decoding is
``builder.generate(prompt_ids, max_length=..., method="greedy", end_id=tokenizer.
_token_end_id)`` with a key/value cache (bert4keras' ``AutoRegressiveDecoder`` has no cache).
The task is generated: list the entities of a sentence (``synthetic_ner.py``), scored by
exact match on held-out sentences. ``--smoke`` runs a tiny model for seconds (CI runs it).

    python examples/unilm_seq2seq.py [--method beam]
    python examples/unilm_seq2seq.py --smoke
"""

import argparse
import time

import keras
import numpy as np

import synthetic_ner
from keraformer.data import DataGenerator, sequence_padding
from keraformer.models import build_transformer_model
from keraformer.tokenizers import Tokenizer


class PairBatches(DataGenerator):
    """``[token_ids, segment_ids]``, next-token targets and their weights (target tokens)."""

    def __init__(self, data, tokenizer, maxlen, batch_size):
        super().__init__(data, batch_size)
        self.tokenizer, self.maxlen = tokenizer, maxlen

    def __iter__(self, random=False):
        token_ids, segment_ids = [], []
        for is_end, (source, target) in self.sample(random):
            ids, segments = self.tokenizer.encode(source, target, maxlen=self.maxlen)
            token_ids.append(ids)
            segment_ids.append(segments)
            if len(token_ids) == self.batch_size or is_end:
                token_ids = sequence_padding(token_ids, pad_to_multiple_of=8)
                segment_ids = sequence_padding(segment_ids, pad_to_multiple_of=8)
                # position i predicts token i + 1, scored when that token is in the target
                targets = np.pad(token_ids[:, 1:], ((0, 0), (0, 1)))
                weights = np.pad(segment_ids[:, 1:], ((0, 0), (0, 1))).astype("float32")
                yield [token_ids, segment_ids], targets, weights
                token_ids, segment_ids = [], []


def generate_titles(builder, tokenizer, sources, maxlen, max_length, method):
    """Generated targets of ``sources`` (one ``builder.generate`` call per batch of 32)."""
    titles = []
    for i in range(0, len(sources), 32):
        prompts = [tokenizer.encode(s, maxlen=maxlen)[0] for s in sources[i:i + 32]]
        generated = builder.generate(sequence_padding(prompts), max_length=max_length,
                                     method=method, end_id=tokenizer._token_end_id)
        for row in np.asarray(generated).tolist():
            if tokenizer._token_end_id in row:
                row = row[:row.index(tokenizer._token_end_id)]
            titles.append(tokenizer.decode(row))
    return titles


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sentences", type=int, default=3000)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--maxlen", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--method", default="greedy", choices=["greedy", "beam"])
    parser.add_argument("--evaluate", type=int, default=200, help="test sentences decoded")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="tiny model, seconds")
    args = parser.parse_args()
    if args.smoke:
        args.sentences, args.epochs, args.hidden, args.layers, args.evaluate = 160, 1, 32, 1, 8
    keras.utils.set_random_seed(args.seed)
    start = time.time()

    pairs = synthetic_ner.entity_titles(synthetic_ner.sentences(args.sentences, args.seed))
    split = int(0.8 * len(pairs))
    tokenizer = Tokenizer(synthetic_ner.vocabulary())
    builder = build_transformer_model(
        model="bert", application="unilm", with_mlm=True, return_keras_model=False,
        vocab_size=tokenizer.vocab_size, hidden_size=args.hidden,
        num_hidden_layers=args.layers, num_attention_heads=max(1, args.hidden // 32),
        intermediate_size=4 * args.hidden, max_position_embeddings=max(2 * args.maxlen, 64))
    model = builder.model
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    train = PairBatches(pairs[:split], tokenizer, args.maxlen, args.batch_size)
    model.fit(train.forfit(), steps_per_epoch=len(train), epochs=args.epochs,
              verbose=0 if args.smoke else 2)

    test = pairs[split:][:args.evaluate]
    titles = generate_titles(builder, tokenizer, [s for s, _ in test], args.maxlen,
                             max_length=24 if not args.smoke else 8, method=args.method)
    exact = np.mean([title == target for title, (_, target) in zip(titles, test)])
    print(f"example: {test[0][0]} -> {titles[0]!r} (target {test[0][1]!r})")
    print(f"test exact match {exact:.4f} on {len(test)} sentences ({args.method}), "
          f"{time.time() - start:.0f} s ({keras.backend.backend()})", flush=True)


if __name__ == "__main__":
    main()
