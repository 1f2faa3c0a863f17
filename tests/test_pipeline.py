"""The full pipeline (preprocess → ``mnn_correct`` → topic model → Leiden sweep) on real data.

A regression floor: on Baron mouse, with the default settings and the default 17-resolution
grid, the best Leiden ARI of the pipeline's latent must stay within 0.05 of the value
measured by ``benchmarks/pancreas.py`` (``benchmarks/results/pancreas.md``).
"""

from __future__ import annotations

import numpy as np
import pytest

from scetm_mnn._pipeline import LATENT_KEY, run_pipeline

MEASURED_BEST_ARI = 0.965
"""``scetm_mnn_mnn`` on Baron mouse in ``benchmarks/results/pancreas.md``: the defaults,
corrector + topic model with the MNN term."""


@pytest.fixture(scope="module")
def mouse_result(baron_mouse):
    return run_pipeline(baron_mouse, "batch", label_key="cell_type", random_state=0)


def test_baron_mouse_regression_floor(mouse_result):
    summary = mouse_result.summary
    assert summary["best_ARI"] >= MEASURED_BEST_ARI - 0.05
    # Clusters follow cell types, not mice: bARI near the labels' own batch ARI (0.054).
    assert summary["bARI_at_best_ARI"] < 0.054 + 0.02


def test_pipeline_outputs(mouse_result, baron_mouse):
    adata = mouse_result.adata
    assert adata.n_obs == baron_mouse.n_obs and adata.n_vars == 2000
    assert adata.obsm[LATENT_KEY].shape == (adata.n_obs, 50)
    assert np.isfinite(adata.obsm[LATENT_KEY]).all()
    assert len(mouse_result.sweep) == 17
    assert "mnn_corrected" not in baron_mouse.layers  # the caller's AnnData is untouched
