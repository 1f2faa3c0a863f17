"""``scetm_mnn.pp.mnn_correct``: outputs, edge cases, and correction quality.

Quality is checked on simulated data with a known batch shift and on the real Baron mouse
pancreas (two batches), with the default training budget.
"""

from __future__ import annotations

import inspect
import logging

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import torch
from scipy import sparse
from sklearn.metrics import adjusted_rand_score

from scetm_mnn import pp
from scetm_mnn.datasets import simulate

KEY = "mnn_corrected"
RESOLUTIONS = (0.1, 0.2, 0.3, 0.4, 0.6, 0.8, 1.0)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def log_sim(sim_adata):
    return pp.preprocess(sim_adata, n_top_genes=300, batch_key="batch", copy=True)


@pytest.fixture(scope="module")
def corrected_sim(log_sim):
    return pp.mnn_correct(log_sim, "batch", copy=True)


@pytest.fixture(scope="module")
def baron_corrected(baron_mouse):
    adata = pp.preprocess(baron_mouse, n_top_genes=2000, batch_key="batch", copy=True)
    pp.mnn_correct(adata, "batch")
    return adata


def quick(adata, **kwargs):
    """A short run (the outputs' form does not depend on the training budget)."""
    return pp.mnn_correct(adata, "batch", max_epochs=2, pairs_per_epoch=256, **kwargs)


def gap_before_after(log_sim, corrected):
    """The uncorrected 20-component PCA, and the batch gap in it before and after."""
    reference = log_sim.copy()
    sc.pp.pca(reference, n_comps=20, random_state=0)
    loadings, mean = reference.varm["PCs"], log_sim.X.toarray().mean(axis=0)
    before = centroid_gap(reference.obsm["X_pca"], log_sim.obs)
    after = centroid_gap((corrected.layers[KEY] - mean) @ loadings, log_sim.obs)
    return reference, before, after


def centroid_gap(z: np.ndarray, obs) -> float:
    """Mean distance between the batch centroids of each cell type."""
    gaps = []
    for cell_type in obs["cell_type"].unique():
        of_type = (obs["cell_type"] == cell_type).to_numpy()
        centroids = [
            z[of_type & (obs["batch"] == batch).to_numpy()].mean(axis=0)
            for batch in obs["batch"].unique()
        ]
        gaps.append(np.linalg.norm(centroids[0] - centroids[1]))
    return float(np.mean(gaps))


def leiden_aris(z: np.ndarray, obs) -> tuple[float, float]:
    """Best cell-type ARI and mean batch ARI of Leiden clusters over RESOLUTIONS."""
    tmp = ad.AnnData(obs=obs[["batch", "cell_type"]].copy(), obsm={"z": np.asarray(z)})
    sc.pp.neighbors(tmp, use_rep="z", n_neighbors=15, random_state=0)
    scores = []
    for resolution in RESOLUTIONS:
        sc.tl.leiden(tmp, resolution=resolution, flavor="igraph", n_iterations=2, random_state=0)
        scores.append(
            (
                adjusted_rand_score(tmp.obs["cell_type"], tmp.obs["leiden"]),
                adjusted_rand_score(tmp.obs["batch"], tmp.obs["leiden"]),
            )
        )
    type_aris, batch_aris = zip(*scores)
    return max(type_aris), float(np.mean(batch_aris))


def batch_entropy(z: np.ndarray, batches, n_neighbors: int = 15) -> float:
    """Mean entropy of the batch labels among each cell's nearest neighbours."""
    from sklearn.neighbors import NearestNeighbors

    codes = np.unique(np.asarray(batches), return_inverse=True)[1]
    idx = NearestNeighbors(n_neighbors=n_neighbors + 1).fit(z).kneighbors(z)[1][:, 1:]
    freq = np.stack([(codes[idx] == b).mean(axis=1) for b in np.unique(codes)], axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(-np.nansum(freq * np.log(freq), axis=1).mean())


# --- outputs --------------------------------------------------------------------------


def test_outputs(log_sim, corrected_sim):
    adata = corrected_sim
    assert KEY not in log_sim.layers and KEY not in log_sim.uns  # copy=True
    assert (adata.X != log_sim.X).nnz == 0
    layer = adata.layers[KEY]
    assert isinstance(layer, np.ndarray) and layer.dtype == np.float32
    assert layer.shape == log_sim.shape and np.isfinite(layer).all()
    assert not np.allclose(layer, log_sim.X.toarray(), atol=1e-2)  # it did correct
    assert adata.obsm["X_" + KEY].shape == (log_sim.n_obs, 50)
    info = adata.uns[KEY]
    assert info["params"]["distance"] == "l1" and info["params"]["latent"] == "pca"
    assert (
        info["n_pairs"] == adata.obsp[KEY + "_pairs"].nnz // 2 == sum(info["pair_counts"].values())
    )
    assert set(info["timing"]) == {"latent", "pairs", "train", "apply"}


def test_pairs_are_symmetric_and_across_batches(corrected_sim):
    pairs = corrected_sim.obsp[KEY + "_pairs"]
    assert sparse.issparse(pairs) and pairs.shape == (600, 600)
    assert (pairs != pairs.T).nnz == 0 and pairs.nnz > 1000
    rows, cols = pairs.nonzero()
    batches = corrected_sim.obs["batch"].to_numpy()
    assert (batches[rows] != batches[cols]).all()
    assert corrected_sim.uns[KEY]["pair_counts"] == {"batch_0|batch_1": pairs.nnz // 2}


def test_history_decreases(corrected_sim):
    history = np.asarray(corrected_sim.uns[KEY]["history"])
    assert len(history) == corrected_sim.uns[KEY]["params"]["max_epochs"]
    assert corrected_sim.uns[KEY]["params"]["network"] == "residual"  # "auto" at 600 cells
    assert history[-1] < 0.5 * history[0]
    assert history[-5:].mean() < history[:5].mean()


# --- quality --------------------------------------------------------------------------


def test_simulated_batch_shift_is_removed_and_types_kept(log_sim, corrected_sim):
    """Batch centroids of each cell type move (far more than) 2× closer in the PCA of the
    uncorrected data; Leiden clusters then follow cell types, not batches."""
    reference, before, after = gap_before_after(log_sim, corrected_sim)
    assert after < 0.25 * before  # measured: 12.0 → 0.3
    type_before, batch_before = leiden_aris(reference.obsm["X_pca"], log_sim.obs)
    type_after, batch_after = leiden_aris(corrected_sim.obsm["X_" + KEY], log_sim.obs)
    assert type_before < 0.8 and batch_before > 0.2  # measured: 0.62 and 0.29
    assert type_after >= 0.95 and batch_after < 0.1  # measured: 1.0 and 0.03


def test_baron_mouse_batches_mix_and_cell_types_stay(baron_corrected):
    """Real data, default settings: kNN batch entropy up, Leiden batch ARI down, and the
    best cell-type ARI over RESOLUTIONS no more than 0.02 lower than without correction."""
    adata = baron_corrected
    reference = adata.copy()
    sc.pp.pca(reference, n_comps=50, random_state=0)
    before, after = reference.obsm["X_pca"], adata.obsm["X_" + KEY]
    entropy_before = batch_entropy(before, adata.obs["batch"])
    entropy_after = batch_entropy(after, adata.obs["batch"])
    assert entropy_after > entropy_before + 0.2  # measured: 0.26 → 0.60 (max: ln 2 = 0.69)
    type_before, batch_before = leiden_aris(before, adata.obs)
    type_after, batch_after = leiden_aris(after, adata.obs)
    assert type_after >= type_before - 0.02  # measured: 0.952 → 0.942
    assert batch_after < 0.8 * batch_before  # measured: 0.084 → 0.046
    assert adata.uns[KEY]["n_pairs"] > 2000  # measured: 6952


def _gap_ratios(n_cells: int) -> tuple[float, float, float]:
    """Batch-gap ratios (corrected / uncorrected) on one simulated design at ``n_cells``:
    over all genes, in the corrector's PCA, and in the genes' directions outside it."""

    from scetm_mnn.pp._latent import fit_pca

    adata = simulate(n_cells=n_cells, n_genes=500, n_batches=2, n_cell_types=4, random_state=0)
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    pp.mnn_correct(adata, "batch")
    x = adata.X.toarray()
    types, batches = adata.obs["cell_type"].to_numpy(), adata.obs["batch"].to_numpy()
    space = fit_pca(x, 50, random_state=0)  # the corrector's frozen PCA (same seed)
    loadings = space.loadings.numpy().astype(np.float64)

    def gap(m, outside=False):
        gaps = []
        for t in np.unique(types):
            a, b = (
                m[(types == t) & (batches == batch)].mean(axis=0)
                for batch in ("batch_0", "batch_1")
            )
            d = a - b
            gaps.append(np.linalg.norm(d - loadings @ (loadings.T @ d) if outside else d))
        return np.mean(gaps)

    corrected = adata.layers[KEY]
    with torch.no_grad():
        before = space(torch.from_numpy(x)).numpy()
    return (
        gap(corrected) / gap(x),
        gap(adata.obsm["X_" + KEY]) / gap(before),
        gap(corrected, outside=True) / gap(x, outside=True),
    )


def test_correction_does_not_fall_with_size():
    """4× the cells on one design, default budget: the batch gap shrinks as much (within
    0.03 over all genes), and the corrector leaves the genes' directions outside its PCA,
    which its loss cannot see, exactly as they were. (Unprojected, it added batch-specific
    changes there that grew with the data: gene-space ratio 0.37 → 0.45, outside 2.6 → 4.4.)
    """
    genes_small, pca_small, outside_small = _gap_ratios(1500)
    genes_large, pca_large, outside_large = _gap_ratios(6000)
    assert genes_large <= genes_small + 0.03  # measured: 0.149 → 0.136
    assert abs(genes_large - genes_small) < 0.05
    # In the data's own units: the corrected coordinates keep their within-batch spread.
    # Measured: 0.058, 0.089 (0.064, 0.103 in a fresh CI clone).
    assert pca_small < 0.15 and pca_large < 0.15
    assert outside_small == pytest.approx(1, abs=1e-3)
    assert outside_large == pytest.approx(1, abs=1e-3)


# --- reproducibility and API ------------------------------------------------------------


def test_same_seed_same_result_and_global_rng_untouched(log_sim):
    state = torch.get_rng_state()
    first, second, other = (quick(log_sim, copy=True, random_state=s) for s in (0, 0, 1))
    assert torch.equal(state, torch.get_rng_state())
    np.testing.assert_array_equal(first.layers[KEY], second.layers[KEY])
    assert first.uns[KEY]["history"] == second.uns[KEY]["history"]
    assert not np.allclose(first.layers[KEY], other.layers[KEY])


def test_copy_and_in_place_agree(log_sim):
    copied = quick(log_sim, copy=True)
    adata = log_sim.copy()
    x = adata.X.copy()
    assert quick(adata) is None
    assert (adata.X != x).nnz == 0
    for attr in ("layers", "obsm", "obsp", "uns"):
        assert set(getattr(adata, attr).keys()) == set(getattr(copied, attr).keys())
    np.testing.assert_array_equal(adata.layers[KEY], copied.layers[KEY])
    np.testing.assert_array_equal(adata.obsm["X_" + KEY], copied.obsm["X_" + KEY])


@pytest.mark.parametrize(
    "kwargs", [{"distance": "l2"}, {"latent": "autoencoder", "n_comps": 10}], ids=str
)
def test_variants_run(log_sim, kwargs):
    out = quick(log_sim, copy=True, key_added="variant", **kwargs)
    assert out.layers["variant"].shape == log_sim.shape
    assert out.obsm["X_variant"].shape == (log_sim.n_obs, kwargs.get("n_comps", 50))
    history = out.uns["variant"]["history"]
    assert len(history) == 2 and np.isfinite(history).all()
    for key, value in kwargs.items():
        assert out.uns["variant"]["params"][key] == value


@pytest.mark.parametrize("dense", [True, False], ids=["dense", "sparse"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_input_formats_agree(log_sim, dense, dtype):
    reference = quick(log_sim, copy=True).layers[KEY]
    adata = log_sim.copy()
    adata.X = adata.X.toarray().astype(dtype) if dense else sparse.csr_matrix(adata.X, dtype=dtype)
    quick(adata)
    np.testing.assert_allclose(adata.layers[KEY], reference, atol=1e-5)


def test_layer_argument(log_sim):
    reference = quick(log_sim, copy=True).layers[KEY]
    adata = log_sim.copy()
    adata.layers["log"] = adata.X.copy()
    adata.X = sparse.csr_matrix(adata.shape, dtype=np.float32)
    quick(adata, layer="log")
    np.testing.assert_allclose(adata.layers[KEY], reference, atol=1e-5)
    assert adata.uns[KEY]["params"]["layer"] == "log"
    with pytest.raises(KeyError, match="Layer 'missing' not found"):
        quick(adata, layer="missing")


def test_view(log_sim):
    view = log_sim[log_sim.obs_names[50:550]]
    assert view.is_view
    out = quick(view, copy=True)
    assert out.layers[KEY].shape == (500, log_sim.n_vars) and view.is_view
    assert quick(view) is None
    assert not view.is_view and view.layers[KEY].shape == (500, log_sim.n_vars)
    assert KEY not in log_sim.layers
    np.testing.assert_array_equal(view.layers[KEY], out.layers[KEY])


def test_h5ad_round_trip(corrected_sim, tmp_path):
    path = tmp_path / "corrected.h5ad"
    corrected_sim.write_h5ad(path)
    back = ad.read_h5ad(path)
    np.testing.assert_array_equal(back.layers[KEY], corrected_sim.layers[KEY])
    assert (back.obsp[KEY + "_pairs"] != corrected_sim.obsp[KEY + "_pairs"]).nnz == 0
    info, saved = corrected_sim.uns[KEY], back.uns[KEY]
    np.testing.assert_allclose(saved["history"], info["history"])
    assert dict(saved["pair_counts"]) == info["pair_counts"]
    default = inspect.signature(pp.mnn_correct).parameters["n_neighbors"].default
    assert saved["params"]["n_neighbors"] == info["params"]["n_neighbors"] == default


# --- edge cases -------------------------------------------------------------------------


def test_one_batch_warns_and_copies_data(log_sim, tmp_path):
    adata = log_sim[log_sim.obs["batch"] == "batch_0"].copy()
    with pytest.warns(UserWarning, match="single batch"):
        pp.mnn_correct(adata, "batch")
    np.testing.assert_array_equal(adata.layers[KEY], adata.X.toarray())
    assert adata.obsp[KEY + "_pairs"].nnz == 0 and adata.uns[KEY]["history"] == []
    adata.layers[KEY][0, 0] += 1  # the layer is a copy, not a view of X
    assert adata.X[0, 0] != adata.layers[KEY][0, 0]
    adata.write_h5ad(tmp_path / "one_batch.h5ad")


def test_small_batch_reduces_k(log_sim, caplog):
    batches = log_sim.obs["batch"].to_numpy()
    keep = np.r_[np.flatnonzero(batches == "batch_0"), np.flatnonzero(batches == "batch_1")[:8]]
    with caplog.at_level(logging.INFO, logger="scetm_mnn"):
        out = quick(log_sim[keep], copy=True, n_neighbors=20)
    assert "k reduced from 20 to 8" in caplog.text
    assert out.uns[KEY]["n_pairs"] > 0


def test_no_pairs_raises_with_hint(log_sim):
    batches = log_sim.obs["batch"].to_numpy()
    keep = np.r_[np.flatnonzero(batches == "batch_0"), np.flatnonzero(batches == "batch_1")[:2]]
    # two cells in batch_1: at most 2 × 2 pairs, fewer than find_mnn_pairs' min_pairs (5)
    with pytest.raises(ValueError, match=r"No mutual nearest neighbours.*increase n_neighbors"):
        quick(log_sim[keep].copy())


def test_bad_input(log_sim):
    with pytest.raises(KeyError, match="Available columns"):
        pp.mnn_correct(log_sim, "donor")
    for bad_value in (np.nan, np.inf):
        bad = log_sim.copy()
        bad.X = bad.X.toarray()
        bad.X[3, 3] = bad_value
        with pytest.raises(ValueError, match="NaN or infinite"):
            quick(bad)
    for kwargs, match in [
        ({"search_rounds": 0}, "search_rounds"),
        ({"n_search_comps": 0}, "n_search_comps"),
        ({"distance": "cosine"}, "distance"),
        ({"latent": "umap"}, "latent"),
        ({"n_neighbors": 0}, "n_neighbors"),
    ]:
        with pytest.raises(ValueError, match=match):
            quick(log_sim, **kwargs)
    assert KEY not in log_sim.layers  # nothing is written on failure


def test_raw_counts_are_refused(sim_adata, log_sim):
    """Counts (integers up to hundreds) would be corrected as if log-scale; refuse them."""
    message = (
        r"looks like raw counts; run scetm_mnn\.pp\.preprocess\(adata\) first "
        r"\(or sc\.pp\.normalize_total \+ sc\.pp\.log1p\)"
    )
    counts = sim_adata.copy()
    with pytest.raises(ValueError, match=r"adata\.X \(maximum .*\) " + message):
        quick(counts)
    assert KEY not in counts.layers
    with pytest.raises(ValueError, match=r"adata\.layers\['counts'\].*" + message):
        quick(log_sim.copy(), layer="counts")  # preprocess's raw counts
    small = sim_adata.copy()  # integer counts capped at 40: still counts
    small.X = small.X.minimum(40)
    with pytest.raises(ValueError, match="integer-valued, maximum 40"):
        quick(small)


def test_bottleneck_network_removes_the_batch_shift(log_sim):
    """The bottleneck network (the default above AUTO_RESIDUAL_MAX_CELLS) on the same
    simulated shift: the batch centroids of each type move 4× closer, clusters follow types."""
    adata = pp.mnn_correct(log_sim, "batch", network="bottleneck", copy=True)
    assert adata.uns[KEY]["params"]["network"] == "bottleneck"
    _, before, after = gap_before_after(log_sim, adata)
    assert after < 0.25 * before  # measured: 12.0 → 1.5
    type_after, batch_after = leiden_aris(adata.obsm["X_" + KEY], log_sim.obs)
    assert type_after >= 0.95 and batch_after < 0.1
    # Outside the corrector's subspace the expression is unchanged, as with the residual.
    basis = adata.varm[KEY + "_basis"]
    change = adata.layers[KEY] - log_sim.X.toarray()
    np.testing.assert_allclose(change - change @ basis @ basis.T, 0, atol=1e-4)


def test_auto_network_switches_with_size(log_sim, monkeypatch):
    from scetm_mnn.pp import _fitting

    monkeypatch.setattr(_fitting, "AUTO_RESIDUAL_MAX_CELLS", log_sim.n_obs - 1)
    adata = quick(log_sim, copy=True)
    assert adata.uns[KEY]["params"]["network"] == "bottleneck"
    with pytest.raises(ValueError, match="network must be"):
        quick(log_sim, copy=True, network="resnet")


def test_max_search_cells_samples_each_batch(log_sim):
    """Only sampled cells are paired; the sample is seeded; pairs stay across batches."""
    first = quick(log_sim, copy=True, max_search_cells=100)
    again = quick(log_sim, copy=True, max_search_cells=100)
    pairs = first.obsp[KEY + "_pairs"]
    paired = np.flatnonzero(pairs.getnnz(axis=1) > 0)
    batches = log_sim.obs["batch"].to_numpy()
    for batch in np.unique(batches):
        assert np.isin(paired, np.flatnonzero(batches == batch)).sum() <= 100
    assert (pairs != again.obsp[KEY + "_pairs"]).nnz == 0
    assert first.uns[KEY]["params"]["max_search_cells"] == 100
    with pytest.raises(ValueError, match="max_search_cells"):
        quick(log_sim, copy=True, max_search_cells=0)


def _within_batch_variance(x: np.ndarray, batches) -> float:
    codes = pd.factorize(np.asarray(batches))[0]
    return sum(float(x[codes == c].var(axis=0, ddof=1).sum() * ((codes == c).sum() - 1))
               for c in np.unique(codes))  # fmt: skip


def test_the_correction_keeps_the_cells_spread_within_their_batches(log_sim, corrected_sim):
    """MNN training alone shrinks the coordinates (pulling everything together shortens
    every pair); the corrector scales them back to their within-batch spread, so the
    corrected layer keeps its biology above the genes outside the corrector's subspace."""
    basis = corrected_sim.varm[KEY + "_basis"]
    x = log_sim.X.toarray()
    before = _within_batch_variance(x @ basis, log_sim.obs["batch"])
    latent = corrected_sim.obsm["X_" + KEY]
    after = _within_batch_variance(latent, log_sim.obs["batch"])
    assert after == pytest.approx(before, rel=1e-3)
    layer = _within_batch_variance(corrected_sim.layers[KEY] @ basis, log_sim.obs["batch"])
    assert layer == pytest.approx(before, rel=1e-3)
    # A fresh PCA of the corrected layer clusters by type, not batch, as the latent does.
    pca = sc.pp.pca(corrected_sim.layers[KEY], n_comps=20, random_state=0)
    type_ari, batch_ari = leiden_aris(pca, log_sim.obs)
    assert type_ari >= 0.95 and batch_ari < 0.1
