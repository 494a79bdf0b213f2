"""Named-entity recognition with a BERT and a GlobalPointer head, the bert4keras way.

A port of bert4keras' GlobalPointer NER script by its imports: every span ``(start, end)`` of
a sentence gets a score per entity type from ``GlobalPointer(heads=types, head_size=64)``
(``--efficient`` takes ``EfficientGlobalPointer``), trained with
``global_pointer_crossentropy`` and an F1 metric on the span scores; spans scoring > 0 are
the predicted entities. Labels are ``(types, length, length)`` arrays padded per batch with
``sequence_padding(..., seq_dims=3)``; token spans map to characters with ``rematch``. The
data are generated (``entity_task.py``); the BERT is small and trained from scratch.
``--smoke`` runs a tiny model for seconds (CI runs it).

    python examples/ner_global_pointer.py [--efficient]
    python examples/ner_global_pointer.py --smoke
"""

import time

import keras
import numpy as np
from keras import ops

import entity_task
from keraformer.data import sequence_padding
from keraformer.losses import global_pointer_crossentropy
from keraformer.models import EfficientGlobalPointer, GlobalPointer
from keraformer.tokenizers import Tokenizer

TYPES = entity_task.TYPES


def span_labels(tokenizer, text, entities, maxlen):
    """Token ids and a ``(types, tokens, tokens)`` 0/1 array of the entity spans."""
    tokens, spans = entity_task.token_spans(tokenizer, text, entities, maxlen)
    labels = np.zeros((len(TYPES), len(tokens), len(tokens)), "float32")
    for first, last, kind in spans:
        labels[TYPES.index(kind), first, last] = 1
    return tokenizer.tokens_to_ids(tokens), labels


class SpanBatches(entity_task.TokenizedBatches):
    def __iter__(self, random=False):
        token_ids, labels = [], []
        for is_end, (text, entities) in self.sample(random):
            ids, spans = span_labels(self.tokenizer, text, entities, self.maxlen)
            token_ids.append(ids)
            labels.append(spans)
            if len(token_ids) == self.batch_size or is_end:
                token_ids = sequence_padding(token_ids, pad_to_multiple_of=8)
                length = token_ids.shape[1]
                yield [token_ids, np.zeros_like(token_ids)], \
                    sequence_padding(labels, length=[len(TYPES), length, length], seq_dims=3)
                token_ids, labels = [], []


def global_pointer_f1(y_true, y_pred):
    """Span F1 of the batch: predicted spans are those scoring > 0 (masked spans are -inf)."""
    y_pred = ops.cast(ops.greater(y_pred, 0), "float32")
    y_true = ops.cast(y_true, "float32")
    return 2 * ops.sum(y_true * y_pred) / ops.maximum(ops.sum(y_true + y_pred), 1.0)


def evaluate(model, batches, tokenizer, maxlen):
    """Entity F1 over ``batches.data``: spans scoring > 0, mapped back to characters."""
    predicted, gold = [], []
    for (inputs, _), rows in zip(batches.__iter__(), chunks(batches.data, batches.batch_size)):
        scores = model.predict_on_batch(inputs)
        for row, (text, entities) in enumerate(rows):
            mapping = tokenizer.rematch(text, tokenizer.tokenize(text, maxlen=maxlen))
            spans = set()
            for kind, start, end in zip(*np.nonzero(np.asarray(scores[row]) > 0)):
                if start < len(mapping) and end < len(mapping) and mapping[start] \
                        and mapping[end]:
                    spans.add((mapping[start][0], mapping[end][-1], TYPES[kind]))
            predicted.append(spans)
            gold.append(set(entities))
    return entity_task.entity_f1(predicted, gold)


def chunks(items, size):
    return [items[i:i + size] for i in range(0, len(items), size)]


def main():
    parser = entity_task.Flags(__doc__, epochs=4, head_size=16)
    parser.add_argument("--efficient", action="store_true", help="EfficientGlobalPointer")
    parser.add_argument("--head-size", type=int, default=64)
    args = parser.parse_args()
    keras.utils.set_random_seed(args.seed)
    start = time.time()

    train_samples, test_samples = entity_task.train_test(args)
    tokenizer = Tokenizer(entity_task.vocabulary())
    bert = entity_task.small_bert(args, tokenizer.vocab_size)
    head = (EfficientGlobalPointer if args.efficient else GlobalPointer)(
        heads=len(TYPES), head_size=args.head_size)
    scores = head(bert.output, mask=ops.not_equal(bert.inputs[0], 0))
    model = keras.Model(bert.inputs, scores)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=global_pointer_crossentropy,
                  metrics=[global_pointer_f1])

    train = SpanBatches(train_samples, tokenizer, args.maxlen, args.batch_size)
    test = SpanBatches(test_samples, tokenizer, args.maxlen, args.batch_size)
    model.fit(train.forfit(), steps_per_epoch=len(train), epochs=args.epochs,
              verbose=0 if args.smoke else 2)
    f1 = evaluate(model, test, tokenizer, args.maxlen)
    print(f"test entity F1 {f1:.4f} on {len(test.data)} sentences "
          f"({type(head).__name__}), {time.time() - start:.0f} s ({keras.backend.backend()})",
          flush=True)


if __name__ == "__main__":
    main()
