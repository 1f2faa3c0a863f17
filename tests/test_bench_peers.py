"""The pancreas benchmark's graph handling and its Scanorama and BBKNN peers (benchmarks/).

The graph scores must be the embedding scores when the graph is an embedding's own kNN
graph; the peers need the ``bench`` extra (skipped without scanorama, bbknn, scib-metrics).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scanpy as sc
from scipy import sparse
from sklearn.neighbors import NearestNeighbors

from scetm_mnn.datasets import simulate
from scetm_mnn.pp import preprocess
from scetm_mnn.tl import batch_entropy, leiden_sweep
from scetm_mnn.tl._utils import neighbors_copy

BENCH_DIR = Path(__file__).resolve().parents[1] / "benchmarks"
RESOLUTIONS = (0.2, 0.6)


@pytest.fixture(scope="module")
def bench():
    """The benchmarks' ``_common`` and ``_peers`` modules (they import each other by name)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(BENCH_DIR))
        import _common
        import _peers

    return _common, _peers


@pytest.fixture(scope="module")
def adata():
    """300 simulated cells over 3 batches, preprocessed, with a 10-component PCA."""
    data = simulate(n_cells=300, n_genes=200, n_batches=3, n_cell_types=3, random_state=0)
    preprocess(data, n_top_genes=200, batch_key="batch")
    sc.pp.pca(data, n_comps=10, random_state=0)
    return data


def _knn_graph(x: np.ndarray, k: int):
    """The exact kNN graph of ``x``: (indices with the cell first, distances, csr without it)."""
    dist, idx = NearestNeighbors(n_neighbors=k + 1).fit(x).kneighbors(x)
    rows = np.repeat(np.arange(x.shape[0]), k)
    csr = sparse.csr_matrix((dist[:, 1:].ravel(), (rows, idx[:, 1:].ravel())), shape=(len(x),) * 2)
    return idx, dist, csr


def test_graph_entropy_is_the_embedding_entropy_on_its_knn(bench, adata):
    common, _ = bench
    _, _, csr = _knn_graph(adata.obsm["X_pca"], common.ENTROPY_NEIGHBOURS)
    graph = common.Graph(connectivities=csr, distances=csr)
    expected = batch_entropy(adata, "X_pca", "batch", n_neighbors=common.ENTROPY_NEIGHBOURS)
    assert common.graph_batch_entropy(adata, graph) == pytest.approx(expected, abs=1e-12)


def test_graph_sweep_is_leiden_sweep_on_the_same_graph(bench, adata):
    common, _ = bench
    keys = {"batch": "batch_key", "cell_type": "label_key"}
    tmp = neighbors_copy(adata, "X_pca", keys, n_neighbors=15, random_state=0)
    graph = common.Graph(tmp.obsp["connectivities"], tmp.obsp["distances"])
    got = common.graph_leiden_sweep(adata, graph, resolutions=RESOLUTIONS, random_state=0)
    expected = leiden_sweep(
        adata, "X_pca", "cell_type", "batch", resolutions=RESOLUTIONS, random_state=0
    )
    pd.testing.assert_frame_equal(got, expected)


def test_graph_neighbors_put_the_cell_first_and_pad_with_it(bench, adata):
    pytest.importorskip("scib_metrics")
    common, _ = bench
    idx, dist, csr = _knn_graph(adata.obsm["X_pca"], 5)
    csr = csr.tolil()
    csr[0, idx[0, 5]] = 0  # cell 0 loses its farthest neighbour
    csr = csr.tocsr()
    csr.eliminate_zeros()
    nn = common.graph_neighbors(common.Graph(connectivities=csr, distances=csr))
    np.testing.assert_array_equal(nn.indices[1:], idx[1:])
    np.testing.assert_allclose(nn.distances[1:], dist[1:])
    np.testing.assert_array_equal(nn.indices[0], [0, 0, *idx[0, 1:5]])
    np.testing.assert_allclose(nn.distances[0], [0, 0, *dist[0, 1:5]])
    assert nn.knn_graph_connectivities is csr


def test_bbknn_gives_a_batch_balanced_graph_scored_on_itself(bench, adata):
    pytest.importorskip("bbknn")
    common, peers = bench
    data = adata.copy()
    seconds = common.run_methods(data, {"bbknn": peers.bbknn}, log=lambda _: None)
    graph = common.stored_graph(data, "bbknn")
    assert "X_bbknn" not in data.obsm and graph is not None
    codes = data.obs["batch"].cat.codes.to_numpy()
    dist = graph.distances
    for i in range(0, data.n_obs, 37):  # 3 per batch, the cell itself among its own batch's
        neighbours = dist.indices[dist.indptr[i] : dist.indptr[i + 1]]
        counts = np.bincount(codes[neighbours], minlength=3)
        assert counts.sum() == 8 and sorted(counts) == [2, 3, 3]
    table, sweeps = common.evaluate(
        data, ["bbknn"], seconds, resolutions=RESOLUTIONS, seed=0, scib=False
    )
    expected_entropy = -(2 / 8 * np.log(2 / 8) + 2 * 3 / 8 * np.log(3 / 8)) / np.log(3)
    assert table.loc[0, "batch entropy"] == pytest.approx(expected_entropy)
    assert sweeps["bbknn"]["resolution"].tolist() == list(RESOLUTIONS)
    assert table.loc[0, "best ARI"] > 0.5


def test_scanorama_embedding_is_in_the_cells_order(bench, adata):
    pytest.importorskip("scanorama")
    _, peers = bench
    emb, _ = peers.scanorama(adata, seed=0)
    assert emb.shape == (adata.n_obs, 100)
    # Interleave the batches, keeping each batch's cells in their order: each batch's
    # matrix is unchanged, so the rows must be the same, moved with their cells.
    rank = adata.obs.groupby("batch", observed=True).cumcount().to_numpy()
    order = np.lexsort((adata.obs["batch"].cat.codes.to_numpy(), rank))
    assert not np.array_equal(order, np.arange(adata.n_obs))
    moved, _ = peers.scanorama(adata[order].copy(), seed=0)
    np.testing.assert_allclose(moved, emb[order], atol=1e-5)


def test_graph_scib_scores_the_graph_metrics_only(bench, adata):
    pytest.importorskip("scib_metrics")
    common, _ = bench
    keys = {"batch": "batch_key", "cell_type": "label_key"}
    tmp = neighbors_copy(adata, "X_pca", keys, n_neighbors=15, random_state=0)
    graph = common.Graph(tmp.obsp["connectivities"], tmp.obsp["distances"])
    # kBET per label is left out: its diffusion neighbours compile pynndescent (30 s).
    row = common.graph_scib(adata, graph, batch_correction={"kbet_per_label": False})
    embedding_only = ["Isolated labels", "Silhouette label", "BRAS", "PCR comparison"]
    graph_bio = ["Leiden NMI", "Leiden ARI", "cLISI"]
    graph_batch = ["iLISI", "Graph connectivity"]
    assert "KBET" not in row.index
    assert row[embedding_only].isna().all()
    assert row[graph_bio + graph_batch].notna().all()
    assert row["Bio conservation"] == pytest.approx(row[graph_bio].mean())
    assert row["Batch correction"] == pytest.approx(row[graph_batch].mean())
    total = 0.6 * row["Bio conservation"] + 0.4 * row["Batch correction"]
    assert row["Total"] == pytest.approx(total)
