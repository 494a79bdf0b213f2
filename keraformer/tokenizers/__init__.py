"""Tokenizers: WordPiece (BERT vocabularies) and SentencePiece (T5, mT5)."""

from keraformer.tokenizers.wordpiece import Tokenizer
from keraformer.tokenizers.spm import SpTokenizer
