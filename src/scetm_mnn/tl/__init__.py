"""Evaluation: Leiden sweeps, batch mixing, scib-metrics, topic meaning, label transfer."""

from .._gene_sets import read_gmt, write_gmt
from ._annotate import annotate_topics, topic_labels
from ._integration import batch_entropy, integration_metrics
from ._leiden import DEFAULT_RESOLUTIONS, label_batch_ari, leiden_sweep, sweep_summary
from ._scib import scib_benchmark
from ._stability import TopicStability, topic_stability
from ._subsample import stratified_subsample
from ._topic_enrichment import topic_enrichment
from ._topics import (
    mean_max_theta,
    topic_diversity,
    topic_specificity,
    topic_summary,
)
from ._transfer import transfer_labels

__all__ = [
    "DEFAULT_RESOLUTIONS",
    "TopicStability",
    "annotate_topics",
    "batch_entropy",
    "integration_metrics",
    "label_batch_ari",
    "leiden_sweep",
    "mean_max_theta",
    "read_gmt",
    "scib_benchmark",
    "stratified_subsample",
    "sweep_summary",
    "topic_diversity",
    "topic_enrichment",
    "topic_labels",
    "topic_specificity",
    "topic_stability",
    "topic_summary",
    "transfer_labels",
    "write_gmt",
]
