"""Figures: integration UMAPs, Leiden sweep curves and topic heatmaps."""

from ._sweep import leiden_sweep
from ._topics import topic_heatmap
from ._umap import integration_umap

__all__ = ["integration_umap", "leiden_sweep", "topic_heatmap"]
