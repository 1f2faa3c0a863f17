"""scetm-mnn: batch-corrected embedded topic models for single-cell RNA-seq.

The package follows the data flow ``datasets → pp → model → tl → pl``:

- :mod:`scetm_mnn.datasets`: simulated and real (Baron pancreas) data.
- :mod:`scetm_mnn.pp`: preprocessing and the deep MNN residual corrector.
- :mod:`scetm_mnn.model`: :class:`~scetm_mnn.model.BatchCorrectedSCETM`, a scvi-tools model.
- :mod:`scetm_mnn.module` / :mod:`scetm_mnn.train`: its torch module and training plan.
- :mod:`scetm_mnn.tl` / :mod:`scetm_mnn.pl`: evaluation metrics and figures.
"""

import logging
from importlib.metadata import PackageNotFoundError, version

from . import datasets, model, module, pl, pp, tl, train

try:
    __version__ = version("scetm-mnn")
except PackageNotFoundError:  # pragma: no cover - source checkout without install
    __version__ = "0.0.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = ["datasets", "model", "module", "pl", "pp", "tl", "train"]
