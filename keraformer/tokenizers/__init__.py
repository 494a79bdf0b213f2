"""Tokenizers: WordPiece (BERT vocabularies) and SentencePiece (T5, mT5)."""
