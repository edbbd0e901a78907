"""The three Matryoshka axes: MEL (embedding rank), MLL (depth) and MRL (embedding width)."""

from mlembed.axes.mel import MEL, FactorizedEmbedding
from mlembed.axes.mll import MLL
from mlembed.axes.mrl import MRL

__all__ = ["MEL", "MLL", "MRL", "FactorizedEmbedding"]
