"""Sequence-to-sequence with mT5 and ``builder.generate``, the bert4keras way.

A port of bert4keras' mT5 title-generation script by its imports: text goes through
``SpTokenizer(model, token_start=None, token_end="</s>")`` (``encode(text, maxlen=...)``
returns ``(token_ids, segment_ids)`` and ends with ``</s>``), the mT5 model
``[encoder_ids, decoder_ids] -> next-token probabilities`` learns the target with the decoder
input shifted right by the start id 0, and ``builder.generate(encoder_ids, max_length=...)``
decodes with a key/value cache. The task is generated: list the entities of a sentence
(``entity_task.py``), scored by exact match on held-out sentences; the SentencePiece model is
trained here on the generated text and the mT5 (gated-GELU, untied output) is small and
trained from scratch. ``--smoke`` runs a tiny model for seconds (CI runs it).

    python examples/mt5_seq2seq.py [--method beam]
    python examples/mt5_seq2seq.py --smoke
"""

import os
import tempfile
import time

import keras
import numpy as np
import sentencepiece

import entity_task
from keraformer.data import sequence_padding
from keraformer.models import build_transformer_model
from keraformer.tokenizers import SpTokenizer


def train_sentencepiece(texts, folder, vocab_size):
    """A unigram SentencePiece model of ``texts`` with T5's ids (pad 0, end 1, unknown 2)."""
    corpus = os.path.join(folder, "corpus.txt")
    with open(corpus, "w", encoding="utf-8") as f:
        f.write("\n".join(texts))
    sentencepiece.SentencePieceTrainer.train(
        input=corpus, model_prefix=os.path.join(folder, "spm"), vocab_size=vocab_size,
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0,
        hard_vocab_limit=False, minloglevel=2)
    return os.path.join(folder, "spm.model")


class Seq2SeqBatches(entity_task.TokenizedBatches):
    """``[encoder_ids, decoder_ids]``, targets and their weights (non-padding targets)."""

    def __iter__(self, random=False):
        sources, targets = [], []
        for is_end, (source, target) in self.sample(random):
            sources.append(self.tokenizer.encode(source, maxlen=self.maxlen)[0])
            targets.append(self.tokenizer.encode(target, maxlen=self.maxlen)[0])
            if len(sources) == self.batch_size or is_end:
                targets = sequence_padding(targets, pad_to_multiple_of=8)
                decoder_ids = np.pad(targets[:, :-1], ((0, 0), (1, 0)))  # start id 0 first
                yield [sequence_padding(sources, pad_to_multiple_of=8), decoder_ids], \
                    targets, (targets != 0).astype("float32")
                sources, targets = [], []


def main():
    args = entity_task.Flags(__doc__, epochs=12, width="d-model", seq2seq=True).parse_args()
    keras.utils.set_random_seed(args.seed)
    start = time.time()

    train_pairs, test_pairs = map(entity_task.entity_titles, entity_task.train_test(args))
    folder = tempfile.mkdtemp(prefix="mt5_example_")
    spm = train_sentencepiece([t for pair in train_pairs for t in pair], folder,
                              vocab_size=300 if not args.smoke else 200)
    tokenizer = SpTokenizer(spm, token_start=None, token_end="</s>")
    heads = max(1, args.d_model // 32)
    builder = build_transformer_model(
        model="mt5", return_keras_model=False, vocab_size=tokenizer.vocab_size,
        d_model=args.d_model, d_kv=args.d_model // heads, d_ff=2 * args.d_model,
        num_layers=args.layers, num_heads=heads, feed_forward_proj="gated-gelu",
        dropout_rate=0.0)
    train = Seq2SeqBatches(train_pairs, tokenizer, args.maxlen, args.batch_size)
    entity_task.train_and_score(builder, train, tokenizer, test_pairs, args, start)


if __name__ == "__main__":
    main()
