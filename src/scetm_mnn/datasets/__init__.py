"""Datasets: a seeded simulator with batch effects, the Baron pancreas data and its markers."""

from ._baron import baron_pancreas
from ._markers import pancreas_markers
from ._simulate import simulate

__all__ = ["baron_pancreas", "pancreas_markers", "simulate"]
