"""Evaluation: Leiden sweeps (ARI, NMI, bARI), batch mixing, scib-metrics, topic meaning."""

from ._integration import integration_metrics
from ._leiden import DEFAULT_RESOLUTIONS, label_batch_ari, leiden_sweep, sweep_summary
from ._scib import scib_benchmark
from ._topics import mean_max_theta, topic_diversity, topic_specificity, topic_summary

__all__ = [
    "DEFAULT_RESOLUTIONS",
    "integration_metrics",
    "label_batch_ari",
    "leiden_sweep",
    "mean_max_theta",
    "scib_benchmark",
    "sweep_summary",
    "topic_diversity",
    "topic_specificity",
    "topic_summary",
]
