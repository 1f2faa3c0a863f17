"""scetm-mnn: batch-corrected embedded topic models for single-cell RNA-seq.

The package follows the data flow ``datasets → pp → model → tl → pl``:

- :mod:`scetm_mnn.datasets`: simulated and real (Baron pancreas) data.
- :mod:`scetm_mnn.pp`: preprocessing and the deep MNN residual corrector.
- :mod:`scetm_mnn.model`: :class:`~scetm_mnn.model.BatchCorrectedSCETM`, a scvi-tools model.
- :mod:`scetm_mnn.module` / :mod:`scetm_mnn.train`: its torch module and training plan.
- :mod:`scetm_mnn.tl` / :mod:`scetm_mnn.pl`: evaluation metrics and figures.
"""

import logging

from . import datasets, model, module, pl, pp, tl, train

__version__ = "0.1.0"
"""The package version: the one place it is written (pyproject reads it through hatch)."""

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = ["datasets", "model", "module", "pl", "pp", "tl", "train"]
