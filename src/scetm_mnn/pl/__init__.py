"""Figures: UMAPs, Leiden sweep curves, topic heatmaps, metrics over seeds, the run report."""

from ._report import report
from ._seeds import seed_metrics
from ._sweep import leiden_sweep
from ._topics import topic_heatmap
from ._umap import FIGURE_MAX_CELLS, integration_umap

__all__ = [
    "FIGURE_MAX_CELLS",
    "integration_umap",
    "leiden_sweep",
    "report",
    "seed_metrics",
    "topic_heatmap",
]
