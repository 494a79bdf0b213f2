"""Named-entity recognition with a BERT and a CRF, the bert4keras way.

A port of bert4keras' CRF sequence-labelling script by its imports: characters are tokenized
with ``Tokenizer.tokenize(text, maxlen=...)``, tied back to the text with ``rematch``, labelled
B-/I-/O per entity type and batched by a ``DataGenerator``; a ``ConditionalRandomField`` on the
BERT's per-token scores is trained with its ``sparse_loss`` and ``sparse_accuracy``, and
decoded with ``viterbi_decode(scores, crf.trans, starts=[0], ends=[0])`` (``[CLS]``/``[SEP]``
are labelled O). Reports entity-level F1 on held-out sentences. The data are generated
(``entity_task.py``); the BERT is small and trained from scratch. ``--smoke`` runs a tiny
model for seconds (CI runs it).

    python examples/ner_crf.py
    python examples/ner_crf.py --smoke
"""

import time

import keras
from keras import ops

import entity_task
from keraformer.data import sequence_padding
from keraformer.generation import viterbi_decode
from keraformer.models import ConditionalRandomField
from keraformer.tokenizers import Tokenizer

LABELS = ["O"] + [f"{prefix}-{kind}" for kind in entity_task.TYPES for prefix in "BI"]


def token_labels(tokenizer, text, entities, maxlen):
    """Token ids, segment ids and B-/I-/O label ids of one sentence (spans via ``rematch``)."""
    tokens, spans = entity_task.token_spans(tokenizer, text, entities, maxlen)
    labels = [0] * len(tokens)
    for first, last, kind in spans:
        labels[first] = LABELS.index("B-" + kind)
        labels[first + 1:last + 1] = [LABELS.index("I-" + kind)] * (last - first)
    token_ids = tokenizer.tokens_to_ids(tokens)
    return token_ids, [0] * len(token_ids), labels


class NerBatches(entity_task.TokenizedBatches):
    def __iter__(self, random=False):
        token_ids, segment_ids, labels = [], [], []
        for is_end, (text, entities) in self.sample(random):
            ids, segments, tags = token_labels(self.tokenizer, text, entities, self.maxlen)
            token_ids.append(ids)
            segment_ids.append(segments)
            labels.append(tags)
            if len(token_ids) == self.batch_size or is_end:
                yield [sequence_padding(token_ids, pad_to_multiple_of=8),
                       sequence_padding(segment_ids, pad_to_multiple_of=8)], \
                    sequence_padding(labels, pad_to_multiple_of=8)
                token_ids, segment_ids, labels = [], [], []


def entities_of(path, mapping):
    """``{(start, end, type)}`` character spans of a B-/I-/O label path."""
    found, current = set(), None
    for i, label in enumerate(LABELS[j] if j >= 0 else "O" for j in path):
        if label.startswith("B-") and mapping[i]:
            current = [mapping[i][0], mapping[i][-1], label[2:]]
            found.add(tuple(current))
        elif label.startswith("I-") and current and current[2] == label[2:] and mapping[i]:
            found.discard(tuple(current))
            current[1] = mapping[i][-1]
            found.add(tuple(current))
        else:
            current = None
    return found


def evaluate(model, crf, batches, tokenizer, maxlen):
    """Entity F1 over ``batches.data``: Viterbi paths of the CRF scores, mapped to characters."""
    scores = model.predict(batches.fortest(), steps=len(batches), verbose=0)
    trans = ops.convert_to_numpy(crf.trans)
    predicted, gold = [], []
    for row, (text, entities) in enumerate(batches.data):
        tokens = tokenizer.tokenize(text, maxlen=maxlen)
        path = viterbi_decode(scores[row, :len(tokens)], trans, starts=[0], ends=[0])
        predicted.append(entities_of(path, tokenizer.rematch(text, tokens)))
        gold.append(set(entities))
    return entity_task.entity_f1(predicted, gold)


def main():
    args = entity_task.Flags(__doc__, epochs=4).parse_args()
    keras.utils.set_random_seed(args.seed)
    start = time.time()

    train_samples, test_samples = entity_task.train_test(args)
    tokenizer = Tokenizer(entity_task.vocabulary())
    bert = entity_task.small_bert(args, tokenizer.vocab_size)
    scores = keras.layers.Dense(len(LABELS))(bert.output)
    crf = ConditionalRandomField(lr_multiplier=10)
    # the builder's output carries the padding mask as its Keras mask, through Dense to the CRF
    # (or pass it: crf(scores, mask=ops.not_equal(bert.inputs[0], 0)))
    model = keras.Model(bert.inputs, crf(scores))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=crf.sparse_loss,
                  metrics=[crf.sparse_accuracy])

    train = NerBatches(train_samples, tokenizer, args.maxlen, args.batch_size)
    test = NerBatches(test_samples, tokenizer, args.maxlen, args.batch_size)
    model.fit(train.forfit(), steps_per_epoch=len(train), epochs=args.epochs,
              verbose=0 if args.smoke else 2)
    f1 = evaluate(model, crf, test, tokenizer, args.maxlen)
    print(f"test entity F1 {f1:.4f} on {len(test.data)} sentences, "
          f"{time.time() - start:.0f} s ({keras.backend.backend()})", flush=True)


if __name__ == "__main__":
    main()
