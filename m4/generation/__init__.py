"""Any-to-any generation with a 4M model: schemes, sampling, chains, quality.

    from m4 import generation
    gen = generation.Generator(model)
    state = {"rgb": generation.image_entry("rgb", rgb_tokens)}
    steps = [generation.Step("depth", "maskgit", num_steps=8),
             generation.Step("caption", "autoregressive", temperature=0.7, top_p=0.9)]
    result = gen.generate(state, steps, seed=0)

Modules: `schedules` (Step: scheme, token and temperature schedules),
`sampling` (temperature, top-k, top-p, guidance), `entries` (what a state
gives and asks for), `sampler` (the jitted Generator), `quality` (metrics of
generated modalities).
"""

from m4.generation.entries import (empty_entry, image_entry, pixel_entry, sequence_entry,
                                   text_entry)
from m4.generation.sampler import Generator, Result
from m4.generation.sampling import filter_logits, guide, sample
from m4.generation.schedules import SCHEMES, Step, steps_from_config

__all__ = ["Generator", "Result", "Step", "SCHEMES", "empty_entry", "image_entry",
           "pixel_entry", "sequence_entry", "text_entry", "filter_logits", "guide", "sample",
           "steps_from_config"]
