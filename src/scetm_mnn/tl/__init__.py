"""Evaluation: Leiden sweeps (ARI, NMI, bARI), batch-mixing metrics and scib-metrics."""

from ._integration import integration_metrics
from ._leiden import DEFAULT_RESOLUTIONS, label_batch_ari, leiden_sweep, sweep_summary
from ._scib import scib_benchmark

__all__ = [
    "DEFAULT_RESOLUTIONS",
    "integration_metrics",
    "label_batch_ari",
    "leiden_sweep",
    "scib_benchmark",
    "sweep_summary",
]
