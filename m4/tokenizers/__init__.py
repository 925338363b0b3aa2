"""Tokenizers: VQ image tokenizers and the WordPiece text tokenizer."""
