"""Offline tools: checkpoint conversion, benchmarks."""
