"""The full pipeline (preprocess → ``mnn_correct`` → topic model → Leiden sweep) on real data.

Floors sit on the uncorrected baseline of the same run: PCA of the same preprocessed data,
scored with the same Leiden sweep. On Baron mouse the uncorrected PCA already reaches a
best ARI of about 0.965 (the two mice differ little), so the pipeline must beat it on the
mean ARI over the sweep and on batch mixing, keep its best ARI close, and keep topics that
name the cell types.
"""

from __future__ import annotations

import numpy as np
import pytest
import scanpy as sc

from scetm_mnn import tl
from scetm_mnn._pipeline import LATENT_KEY, TOPICS_KEY, run_pipeline
from scetm_mnn.datasets import pancreas_markers
from scetm_mnn.tl._integration import _batch_entropy, _knn_batch_counts


@pytest.fixture(scope="module")
def mouse_result(baron_mouse):
    return run_pipeline(baron_mouse, "batch", label_key="cell_type", random_state=0)


@pytest.fixture(scope="module")
def uncorrected(mouse_result):
    adata = mouse_result.adata.copy()
    adata.obsm["X_pca"] = sc.pp.pca(adata.X, n_comps=50, random_state=0)
    sweep = tl.leiden_sweep(adata, "X_pca", "cell_type", "batch", random_state=0)
    return adata, tl.sweep_summary(sweep), sweep


def _entropy(adata, key):
    codes = adata.obs["batch"].cat.codes.to_numpy()
    return _batch_entropy(_knn_batch_counts(adata.obsm[key], codes, 30))


def test_baron_mouse_beats_the_uncorrected_baseline(mouse_result, uncorrected):
    adata, pca, pca_sweep = uncorrected
    ours, sweep = mouse_result.summary, mouse_result.sweep
    assert sweep["ARI"].mean() >= pca_sweep["ARI"].mean() + 0.02
    # The default's best ARI on Baron mouse was 0.921-0.957 over seeds 0-4, seed 0 the
    # lowest, against 0.954-0.965 for the uncorrected PCA (benchmarks/results/pancreas.md).
    assert ours["best_ARI"] >= pca["best_ARI"] - 0.05
    assert _entropy(mouse_result.adata, LATENT_KEY) >= _entropy(adata, "X_pca") + 0.1
    # Clusters follow cell types, not mice: bARI near the labels' own batch ARI (0.054).
    assert ours["bARI_at_best_ARI"] < 0.054 + 0.02


def test_baron_mouse_topics_name_the_cell_types(mouse_result):
    adata = mouse_result.adata
    summary = tl.topic_summary(
        adata,
        "cell_type",
        theta_key=TOPICS_KEY,
        topic_gene=mouse_result.model.get_topic_gene_matrix(),
        markers=pancreas_markers("mouse"),
    )
    assert summary["mean_max_theta"] >= 0.2  # collapsed topics give 1/50 = 0.02
    assert summary["min_ratio"] >= 10
    assert summary["marker_hits"] >= 6


def test_pipeline_outputs(mouse_result, baron_mouse):
    adata = mouse_result.adata
    assert adata.n_obs == baron_mouse.n_obs and adata.n_vars == 2000
    assert adata.obsm[LATENT_KEY].shape == (adata.n_obs, 50)
    assert np.isfinite(adata.obsm[LATENT_KEY]).all()
    assert len(mouse_result.sweep) == 17
    assert "mnn_corrected" not in baron_mouse.layers  # the caller's AnnData is untouched


def test_each_obs_key_is_checked_once_per_run(tmp_path, monkeypatch):
    """run_pipeline checks batch_key and label_key at its boundary, not again per phase."""
    from collections import Counter

    from scetm_mnn import _validation
    from scetm_mnn.datasets import simulate

    checked, check = Counter(), _validation._check_obs_column

    def counted(adata, key, what):
        checked[key] += 1
        return check(adata, key, what)

    monkeypatch.setattr(_validation, "_check_obs_column", counted)
    adata = simulate(n_cells=300, n_genes=120, n_batches=2, n_cell_types=3, random_state=0)
    run_pipeline(
        adata, "batch", label_key="cell_type", out=tmp_path, n_top_genes=120, max_epochs=2
    )
    assert (tmp_path / "report.html").is_file()  # every phase ran, the report's too
    # The run's inputs once each (the report's own "_leiden" column of each UMAP's
    # clusters is a new column of a new AnnData, checked where it is drawn).
    assert {key: checked[key] for key in ("batch", "cell_type")} == {"batch": 1, "cell_type": 1}
    # Outside the run, the public functions check again.
    del adata.obs["cell_type"]
    with pytest.raises(KeyError, match="keys='cell_type' is not a column"):
        tl.stratified_subsample(adata, "cell_type", 100)


def test_gene_sets_guide_and_name_the_topics_of_a_run(tmp_path):
    from scetm_mnn.datasets import simulate

    adata = simulate(n_cells=300, n_genes=120, n_batches=2, n_cell_types=3, random_state=0)
    marker_of = adata.var["marker_of"].astype(str)
    sets = {"programme_0": list(marker_of.index[marker_of == "type_0"])}
    result = run_pipeline(
        adata, "batch", out=tmp_path, n_top_genes=120, max_epochs=2, gene_sets=sets
    )
    assert result.model.topic_names[0] == "programme_0"
    assert result.params["gene_sets"].startswith("1 sets (")
    assert "programme_0" in result.adata.uns["topic_annotation"]["labels"]
    assert "programme_0" in (tmp_path / "report.html").read_text()
