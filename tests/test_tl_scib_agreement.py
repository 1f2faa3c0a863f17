"""``tl.integration_metrics`` against scib-metrics on the same input (the ``bench`` extra).

kBET and the silhouettes are the same quantities and must agree within 0.02 (they agree to
float rounding). The batch entropy is not iLISI: the relation documented in
``integration_metrics``'s Notes is checked instead (same neighbours; per cell, the Shannon
effective number of batches is at least the inverse Simpson index; iLISI and the entropy
agree at no mixing and at full mixing).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scanpy as sc
from sklearn.neighbors import NearestNeighbors

import scetm_mnn as sm

scib_metrics = pytest.importorskip("scib_metrics")
from scib_metrics.nearest_neighbors import NeighborsResults  # noqa: E402

K = 30
TOLERANCE = 0.02


@pytest.fixture(scope="module")
def embedded():
    """450 cells, 3 types far apart, 3 batches shifted by half a standard deviation (a
    batch effect that neighbourhoods partly see), in 10 dimensions."""
    rng = np.random.default_rng(0)
    types, batches = rng.integers(0, 3, 450), rng.integers(0, 3, 450)
    x = rng.normal(size=(450, 10)) + 6 * np.eye(3, 10)[types] + 0.5 * np.eye(3, 10, 3)[batches]
    # float32, as integration_metrics reads embeddings: the neighbours here are its own
    adata = sc.AnnData(np.zeros((450, 1)), obsm={"X_emb": x.astype(np.float32)})
    adata.obs["batch"] = pd.Categorical(np.array(["a", "b", "c"])[batches])
    adata.obs["cell_type"] = pd.Categorical(np.array(["t0", "t1", "t2"])[types])
    return adata


def _neighbours(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact Euclidean kNN without the cell itself, as integration_metrics computes them."""
    distances, indices = NearestNeighbors(n_neighbors=K + 1).fit(x).kneighbors(x)
    return distances[:, 1:], indices[:, 1:]


def test_kbet_and_silhouettes_agree_with_scib_metrics(embedded):
    ours = sm.tl.integration_metrics(embedded, "X_emb", "cell_type", "batch", n_neighbors=K)
    x = embedded.obsm["X_emb"]
    batches = embedded.obs["batch"].to_numpy()
    labels = embedded.obs["cell_type"].to_numpy()
    distances, indices = _neighbours(x)
    acceptance, _, _ = scib_metrics.kbet(NeighborsResults(indices, distances), batches)
    theirs = {
        "kbet_acceptance": float(acceptance),
        "asw_batch": float(scib_metrics.silhouette_batch(x, labels, batches)),
        "asw_label": float(scib_metrics.silhouette_label(x, labels)),
        "silhouette_label": float(scib_metrics.silhouette_label(x, labels, rescale=False)),
        "silhouette_batch": float(scib_metrics.silhouette_label(x, batches, rescale=False)),
    }
    for name, value in theirs.items():
        assert ours[name] == pytest.approx(value, abs=TOLERANCE), name
    # not a vacuous comparison: the batch effect is partly there
    assert 0.05 < ours["kbet_acceptance"] < 0.95


def test_batch_entropy_and_ilisi_obey_the_documented_relation(embedded):
    """scib's LISI on a neighbourhood it weighs uniformly against our entropy on the same one.

    LISI weighs the neighbours with a Gaussian kernel tuned to a perplexity of k / 3. Given
    30 neighbours of which the 10 nearest are at distance 0 and the rest far away, it weighs
    those 10 uniformly (perplexity 10 exactly), and its LISI is the inverse Simpson index
    ``1 / Σ p²`` of their batch frequencies ``p``: the neighbourhoods of
    ``integration_metrics(n_neighbors=10)``, whose entropy ``h`` gives ``B**h ≥ LISI``.
    """
    x = embedded.obsm["X_emb"]
    codes = embedded.obs["batch"].cat.codes.to_numpy()
    n_batches = int(codes.max()) + 1
    k = K // 3
    ours = sm.tl.integration_metrics(embedded, "X_emb", None, "batch", n_neighbors=k)
    _, indices = _neighbours(x)
    counts = np.stack([np.bincount(row, minlength=n_batches) for row in codes[indices[:, :k]]])
    p = counts / k
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.where(p > 0, p * np.log(p), 0.0).sum(1) / np.log(n_batches)
    assert entropy.mean() == pytest.approx(ours["batch_entropy"], abs=1e-9)  # same neighbours
    step = np.where(np.arange(K) < k, 0.0, 1e3) * np.ones((x.shape[0], 1))
    lisi = scib_metrics.lisi_knn(NeighborsResults(indices, step), codes)
    np.testing.assert_allclose(lisi, 1 / (p**2).sum(1), rtol=1e-4)
    assert np.all(n_batches**entropy >= lisi * (1 - 1e-4))  # Hill numbers: order 1 ≥ order 2
    assert np.any(n_batches**entropy > lisi * 1.05)  # and they do differ in between


@pytest.mark.parametrize("mixing", ["none", "random"])
def test_batch_entropy_and_ilisi_at_no_mixing_and_random_mixing(mixing):
    rng = np.random.default_rng(0)
    n = 600
    batches = np.repeat(np.array(["a", "b", "c"]), n // 3)
    x = rng.normal(size=(n, 5)).astype(np.float32)
    if mixing == "none":  # three far-apart clouds, one per batch
        x = x + 100 * np.repeat(np.eye(3, 5, dtype=np.float32), n // 3, axis=0)
    adata = sc.AnnData(np.zeros((n, 1)), obsm={"X_emb": x})
    adata.obs["batch"] = pd.Categorical(batches)
    ours = sm.tl.integration_metrics(adata, "X_emb", None, "batch", n_neighbors=K)
    ours = ours["batch_entropy"]
    distances, indices = _neighbours(x)
    ilisi = float(scib_metrics.ilisi_knn(NeighborsResults(indices, distances), batches))
    if mixing == "none":
        assert ours == pytest.approx(0.0, abs=TOLERANCE)
        assert ilisi == pytest.approx(0.0, abs=TOLERANCE)
    else:
        # random labels: the entropy is near 1, iLISI (inverse Simpson over a Gaussian-
        # weighted neighbourhood of effective size k/3, median, scaled) well below it
        assert 0.95 < ours < 1.0
        assert 0.4 < ilisi < ours - 0.1
