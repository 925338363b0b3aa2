"""m4: massively multimodal masked modeling (4M-style) in JAX/Flax."""

from flax import config as _flax_config

# m4 places parameters explicitly (m4.sharding: jit out_shardings from logical
# names), so NNX variables are not sharded eagerly when they are created; the
# same model code then builds on 1 CPU and on a mesh.
_flax_config.update("flax_always_shard_variable", False)

__version__ = "0.1.0"
