"""Datasets: a seeded simulator, the Baron pancreas data, its markers and orthologs."""

from ._baron import baron_pancreas
from ._markers import pancreas_markers
from ._orthologs import load_orthologs, to_orthologs
from ._simulate import simulate

__all__ = ["baron_pancreas", "load_orthologs", "pancreas_markers", "simulate", "to_orthologs"]
