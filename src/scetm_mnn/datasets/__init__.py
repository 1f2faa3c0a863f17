"""Datasets: a seeded simulator with batch effects, and the Baron pancreas data."""

from ._simulate import simulate

__all__ = ["simulate"]
