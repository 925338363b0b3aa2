"""The 4M model: configs, layers, embeddings, heads and the encoder-decoder."""
