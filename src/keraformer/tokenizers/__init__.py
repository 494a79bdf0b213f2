"""Tokenizers: WordPiece (BERT vocabularies) and SentencePiece (T5, mT5), with bert4keras' API."""

from keraformer.tokenizers.wordpiece import Tokenizer, load_vocab
from keraformer.tokenizers.spm import SpTokenizer
