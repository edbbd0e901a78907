"""Callbacks that drive the axes' state during training, score the grid, and export the trained model."""

from mlembed.callbacks.export import ModelExport
from mlembed.callbacks.grid import GridEvaluation
from mlembed.callbacks.layer_schedule import LayerSchedule
from mlembed.callbacks.rank_sampler import RankSampler
from mlembed.callbacks.svd_init import SVDInit

__all__ = ["GridEvaluation", "LayerSchedule", "ModelExport", "RankSampler", "SVDInit"]
