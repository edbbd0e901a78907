"""mlembed: 3D Matryoshka Learning (MEL x MLL x MRL) of multilingual text embeddings, on Lightning."""

__version__ = "0.1.0"


def load(*args, **kwargs):
    """Load an encoder: see ``mlembed.loading.load`` (imported on first use, so ``import mlembed`` stays cheap)."""
    from mlembed.loading import load as load_encoder

    return load_encoder(*args, **kwargs)
