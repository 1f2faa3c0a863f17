"""What a run returns (:class:`PipelineResult`), and the keys and file names it writes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import anndata as ad
import pandas as pd

from .model import BatchCorrectedSCETM

CORRECTED_KEY = "mnn_corrected"
DATA_FILE = "scetm_mnn.h5ad"
"""The run's data file in ``out`` for counts read from disk: the preprocessed data (streamed
there, :func:`scetm_mnn.pp.preprocess` with ``filename``), then the run's results."""
LATENT_KEY = "X_scetm_mnn"
TOPICS_KEY = "X_topics"


@dataclass
class PipelineResult:
    """What :func:`run_pipeline` produced."""

    adata: ad.AnnData
    model: BatchCorrectedSCETM
    sweep: pd.DataFrame | None = None
    summary: pd.Series | None = None
    files: dict[str, Path] = field(default_factory=dict)
    costs: pd.DataFrame | None = None
    """One row per phase (``phase``, ``seconds``, ``peak_rss_mib``: the process's peak
    resident memory at the phase's end)."""
    params: dict[str, object] = field(default_factory=dict)
    """The arguments of the run, for the report."""
