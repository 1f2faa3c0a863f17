"""Datasets: a seeded simulator with batch effects, and the Baron pancreas data."""

from ._baron import baron_pancreas
from ._simulate import simulate

__all__ = ["baron_pancreas", "simulate"]
