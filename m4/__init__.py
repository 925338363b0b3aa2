"""m4: massively multimodal masked modeling (4M-style) in JAX/Flax."""

__version__ = "0.1.0"
