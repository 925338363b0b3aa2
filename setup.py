"""m4: massively multimodal masked modeling (4M-style) in JAX/Flax."""
import setuptools

setuptools.setup(
    name="m4",
    version="0.1.0",
    description="Massively multimodal masked modeling in JAX/Flax (4M-style).",
    packages=setuptools.find_packages(include=["m4", "m4.*"]),
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.6,<0.11",
        "flax>=0.11,<0.13",
        "optax>=0.2.4,<0.3",
        "orbax-checkpoint>=0.11,<0.13",
        "grain>=0.2.10,<0.3",
        "array-record>=0.7",
        # TFDS reads with tfds.data_source; writing datasets and clu's
        # TensorBoard writer import TensorFlow, so we take the CPU build.
        "tensorflow-datasets>=4.9.8,<5",
        "importlib_resources",  # tensorflow-datasets 4.9.x needs it, undeclared.
        "tensorflow-cpu>=2.18,<3",
        "tensorboard>=2.18,<3",
        "clu>=0.0.12",
        "einops>=0.8",
        "ml-collections>=1.0",
        "numpy>=1.26",
        "tokenizers>=0.20,<1",
        "safetensors>=0.4",
        "pillow>=10",
        "matplotlib>=3.8",
        "tqdm>=4.66",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-xdist>=3.5",
            "nbformat>=5.10",
            "nbclient>=0.10",
            "ipykernel>=6",
        ],
    },
)
