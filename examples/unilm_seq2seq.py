"""Sequence-to-sequence with a UniLM BERT and ``builder.generate``, the bert4keras way.

A port of bert4keras' UniLM title-generation script by its imports: source and target are
encoded as one pair, ``Tokenizer.encode(source, target, maxlen=...)`` (segment 0, then 1),
and a BERT with ``application="unilm"`` (bidirectional over the source, causal over the
target) and its MLM head learns to predict each target token; the loss weights are the
segment ids shifted by one, so only target tokens are scored. Decoding is
``builder.generate(prompt_ids, max_length=..., method="greedy", end_id=tokenizer.
_token_end_id)`` with a key/value cache (bert4keras' ``AutoRegressiveDecoder`` has no cache).
The task is generated: list the entities of a sentence (``entity_task.py``), scored by
exact match on held-out sentences. ``--smoke`` runs a tiny model for seconds (CI runs it).

    python examples/unilm_seq2seq.py [--method beam]
    python examples/unilm_seq2seq.py --smoke
"""

import time

import keras
import numpy as np

import entity_task
from keraformer.data import sequence_padding
from keraformer.tokenizers import Tokenizer


class PairBatches(entity_task.TokenizedBatches):
    """``[token_ids, segment_ids]``, next-token targets and their weights (target tokens)."""

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


def main():
    args = entity_task.Flags(__doc__, epochs=6, seq2seq=True).parse_args()
    keras.utils.set_random_seed(args.seed)
    start = time.time()

    train_pairs, test_pairs = map(entity_task.entity_titles, entity_task.train_test(args))
    tokenizer = Tokenizer(entity_task.vocabulary())
    # source and target share the positions: room for both
    builder = entity_task.small_bert(args, tokenizer.vocab_size, positions=2 * args.maxlen,
                                     application="unilm", with_mlm=True,
                                     return_keras_model=False)
    train = PairBatches(train_pairs, tokenizer, args.maxlen, args.batch_size)
    entity_task.train_and_score(builder, train, tokenizer, test_pairs, args, start,
                                end_id=tokenizer._token_end_id)


if __name__ == "__main__":
    main()
