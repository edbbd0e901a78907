"""mlembed: 3D Matryoshka Learning (MEL x MLL x MRL) of multilingual text embeddings, on Lightning."""

__version__ = "0.1.0"
