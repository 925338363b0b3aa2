"""Offline tools: image grids, pre-tokenization, checkpoint conversion, benchmarks."""
