import numpy as np
import pytest
import scanpy as sc
from scipy import sparse
from sklearn.metrics import adjusted_rand_score

from scetm_mnn import pp


@pytest.fixture(scope="module")
def log_sim(sim_adata):
    return pp.preprocess(sim_adata, n_top_genes=200, batch_key="batch")


@pytest.fixture(scope="module")
def corrected(log_sim):
    return pp.mnn_correct(log_sim, "batch", copy=True, max_epochs=15)


def _centroid_gap(adata, rep):
    z = adata.obsm[rep]
    gaps = []
    for t in adata.obs["cell_type"].cat.categories:
        m = (adata.obs["cell_type"] == t).to_numpy()
        b = adata.obs["batch"].to_numpy()
        gaps.append(
            np.linalg.norm(z[m & (b == "batch_0")].mean(0) - z[m & (b == "batch_1")].mean(0))
        )
    return float(np.mean(gaps))


def _best_leiden_ari(adata, rep):
    ad = adata.copy()
    sc.pp.neighbors(ad, use_rep=rep, random_state=0)
    return max(
        adjusted_rand_score(
            ad.obs["cell_type"],
            sc.tl.leiden(ad, resolution=r, flavor="igraph", n_iterations=2, random_state=0,
                         copy=True).obs["leiden"],
        )
        for r in (0.1, 0.2, 0.4)
    )  # fmt: skip


def test_preprocess_keeps_counts_and_hvgs(sim_adata, log_sim):
    assert log_sim.n_vars == 200
    assert "counts" in log_sim.layers
    raw = sim_adata[log_sim.obs_names, log_sim.var_names].X
    assert (log_sim.layers["counts"] != raw).nnz == 0
    scaled = np.expm1(log_sim.X[:5].toarray())
    counts = log_sim.layers["counts"][:5].toarray()
    nz = counts > 0
    factors = [np.unique(np.round(scaled[i][nz[i]] / counts[i][nz[i]], 3)) for i in range(5)]
    assert all(f.size == 1 for f in factors)  # one size factor per cell: normalize + log1p
    assert sim_adata.n_vars == 300  # caller untouched
    inplace = sim_adata.copy()
    assert pp.preprocess(inplace, n_top_genes=100, copy=False) is None
    assert inplace.n_vars == 100


def test_preprocess_rejects_log_data(log_sim):
    with pytest.raises(ValueError, match="non-integer"):
        pp.preprocess(log_sim)


def test_outputs_and_keys(log_sim, corrected):
    key = "mnn_corrected"
    assert corrected.layers[key].shape == log_sim.shape
    assert corrected.obsm["X_" + key].shape == (log_sim.n_obs, 50)
    pairs = corrected.obsp[key + "_pairs"]
    assert (pairs != pairs.T).nnz == 0 and pairs.nnz > 0
    rows, cols = pairs.nonzero()
    batch = corrected.obs["batch"].to_numpy()
    assert (batch[rows] != batch[cols]).all()  # pairs only across batches
    info = corrected.uns[key]
    assert info["pair_counts"]["batch_0|batch_1"] == pairs.nnz // 2
    history = np.asarray(info["history"])
    assert len(history) > 1 and history[-1] < history[0]
    assert key not in log_sim.layers  # copy=True leaves the input alone


def test_correction_halves_batch_gap_and_keeps_types(log_sim, corrected):
    uncorrected = log_sim.copy()
    pp.mnn_correct(uncorrected, "batch", max_epochs=0)  # same latent, identity network
    before = _centroid_gap(uncorrected, "X_mnn_corrected")
    after = _centroid_gap(corrected, "X_mnn_corrected")
    assert after < 0.5 * before
    assert _best_leiden_ari(corrected, "X_mnn_corrected") > 0.9


def test_seed_reproducible_and_x_untouched(log_sim):
    a, b = log_sim.copy(), log_sim.copy()
    x = a.X.copy()
    pp.mnn_correct(a, "batch", max_epochs=2)
    pp.mnn_correct(b, "batch", max_epochs=2)
    np.testing.assert_array_equal(a.layers["mnn_corrected"], b.layers["mnn_corrected"])
    assert (a.X != x).nnz == 0


@pytest.mark.parametrize("dense", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_input_formats(log_sim, dense, dtype):
    adata = log_sim.copy()
    adata.X = adata.X.toarray().astype(dtype) if dense else sparse.csr_matrix(adata.X, dtype=dtype)
    pp.mnn_correct(adata, "batch", max_epochs=1, distance="l2")
    assert adata.layers["mnn_corrected"].dtype == np.float32


def test_view_and_autoencoder(log_sim):
    view = log_sim[:400]
    out = pp.mnn_correct(view, "batch", max_epochs=1, latent="autoencoder", n_comps=10, copy=True)
    assert out.obsm["X_mnn_corrected"].shape == (400, 10)


def test_one_batch_warns_and_copies(log_sim):
    adata = log_sim[log_sim.obs["batch"] == "batch_0"].copy()
    with pytest.warns(UserWarning, match="single batch"):
        pp.mnn_correct(adata, "batch")
    np.testing.assert_array_equal(adata.layers["mnn_corrected"], adata.X.toarray())


def test_small_batch_reduces_k(log_sim, caplog):
    keep = np.r_[np.flatnonzero(log_sim.obs["batch"] == "batch_0"),
                 np.flatnonzero(log_sim.obs["batch"] == "batch_1")[:8]]  # fmt: skip
    adata = log_sim[keep].copy()
    with caplog.at_level("INFO", logger="scetm_mnn"):
        pp.mnn_correct(adata, "batch", max_epochs=1)
    assert "k reduced from 20 to 8" in caplog.text


def test_bad_input(log_sim):
    with pytest.raises(KeyError, match="Available columns"):
        pp.mnn_correct(log_sim.copy(), "donor")
    bad = log_sim.copy()
    bad.X = bad.X.toarray()
    bad.X[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        pp.mnn_correct(bad, "batch")
    with pytest.raises(ValueError, match="distance"):
        pp.mnn_correct(log_sim.copy(), "batch", distance="cosine")


def test_find_mnn_pairs_is_mutual():
    rng = np.random.default_rng(0)
    z = np.r_[rng.normal(0, 1, (30, 5)), rng.normal(0, 1, (30, 5))]
    batches = np.repeat(["a", "b"], 30)
    pairs, counts = pp.find_mnn_pairs(z, batches, n_neighbors=3)
    from sklearn.neighbors import NearestNeighbors

    zn = z / np.linalg.norm(z, axis=1, keepdims=True)
    ab = NearestNeighbors(n_neighbors=3).fit(zn[30:]).kneighbors(zn[:30])[1]
    ba = NearestNeighbors(n_neighbors=3).fit(zn[:30]).kneighbors(zn[30:])[1]
    expected = {(i, 30 + j) for i in range(30) for j in ab[i] if i in ba[j]}
    rows, cols = sparse.triu(pairs).nonzero()
    assert set(zip(rows.tolist(), cols.tolist())) == expected
    assert counts == {"a|b": len(expected)}


def test_no_pairs_raises_with_hint(log_sim, monkeypatch):
    def no_pairs(z, batches, *args, **kwargs):
        n = len(batches)
        return sparse.csr_matrix((n, n)), {"batch_0|batch_1": 0}

    monkeypatch.setattr("scetm_mnn.pp._mnn_correct.find_mnn_pairs", no_pairs)
    with pytest.raises(ValueError, match=r"No mutual nearest neighbours.*n_neighbors"):
        pp.mnn_correct(log_sim.copy(), "batch")
