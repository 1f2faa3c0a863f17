"""Atlas scale on small data: one row-access path, chunks, low-rank corrected data, backed h5ad."""

from __future__ import annotations

import tracemalloc

import anndata as ad
import h5py
import numpy as np
import pytest
from scipy import sparse

import scetm_mnn as sm
from scetm_mnn._rows import Rows, ShiftedRows, rows_of
from scetm_mnn.datasets import _simulate
from scetm_mnn.model import BatchCorrectedSCETM

QUICK = {"max_epochs": 3, "pairs_per_epoch": 256, "search_rounds": 2}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """600 simulated cells × 150 genes, preprocessed, with an h5ad copy on disk."""
    adata = sm.datasets.simulate(n_cells=600, n_genes=150, n_batches=3, random_state=3)
    sm.pp.preprocess(adata, n_top_genes=150, batch_key="batch")
    path = tmp_path_factory.mktemp("scale") / "small.h5ad"
    adata.write_h5ad(path)
    return adata, path


def _pipeline_latent(data: ad.AnnData) -> np.ndarray:
    """The latent of a small seeded model on ``data``'s corrected expression."""
    BatchCorrectedSCETM.setup_anndata(
        data, layer="counts", batch_key="batch", corrected_layer="mnn_corrected"
    )
    model = BatchCorrectedSCETM(data, n_topics=8)
    model.train(max_epochs=3, seed=0, enable_progress_bar=False)
    return model.get_latent_representation()


def test_every_storage_serves_the_same_rows(small, tmp_path):
    adata, path = small
    dense = adata.X.toarray()
    with h5py.File(tmp_path / "dense.h5", "w") as f:
        f["x"] = dense
    backed = ad.read_h5ad(path, backed="r")
    idx = np.array([5, 1, 3, 3, 599, 0])
    with h5py.File(tmp_path / "dense.h5", "r") as f:
        sources = {
            "dense": Rows(dense),
            "csr": Rows(adata.X),
            "csc": Rows(adata.X.tocsc()),
            "backed X": rows_of(backed),
            "backed layer": rows_of(backed, "counts"),
            "h5py dense": Rows(f["x"]),
        }
        assert sources["backed X"].on_disk and sources["backed layer"].on_disk
        assert sources["h5py dense"].on_disk and not sources["csr"].on_disk
        for name, rows in sources.items():
            expected = adata.layers["counts"].toarray() if name == "backed layer" else dense
            np.testing.assert_allclose(rows.take(idx), expected[idx], err_msg=name)
            stacked = np.vstack([block for _, block in rows.chunks(7)])
            np.testing.assert_allclose(stacked, expected, err_msg=name)
            np.testing.assert_allclose(rows.mean(11), expected.mean(0), rtol=1e-5, err_msg=name)


def test_chunks_reject_nonsense_and_do_not_copy_dense():
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    rows = Rows(x)
    with pytest.raises(ValueError, match="chunk_size must be at least 1"):
        next(rows.chunks(0))
    assert np.shares_memory(rows.chunk(0, 2), x)  # a view: documented as read-only


def test_shifted_rows_are_x_plus_low_rank():
    rng = np.random.default_rng(0)
    x = sparse.random(20, 8, density=0.4, format="csr", random_state=0, dtype=np.float32)
    shift, basis = rng.normal(size=(20, 2)), np.linalg.qr(rng.normal(size=(8, 2)))[0]
    rows = ShiftedRows(x, shift, basis)
    expected = x.toarray() + shift @ basis.T
    np.testing.assert_allclose(rows.take(np.array([3, 0])), expected[[3, 0]], rtol=1e-5)
    np.testing.assert_allclose(np.vstack([b for _, b in rows.chunks(6)]), expected, rtol=1e-5)
    with pytest.raises(ValueError, match="do not fit a matrix"):
        ShiftedRows(x, shift[:5], basis)


def test_chunk_size_does_not_change_the_correction(small):
    adata, _ = small
    default = sm.pp.mnn_correct(adata, "batch", copy=True, **QUICK)
    tiny = sm.pp.mnn_correct(adata, "batch", copy=True, chunk_size=7, **QUICK)
    for key in ("X_mnn_corrected", "mnn_corrected_shift"):
        np.testing.assert_allclose(tiny.obsm[key], default.obsm[key], atol=1e-4)
    np.testing.assert_allclose(
        tiny.layers["mnn_corrected"], default.layers["mnn_corrected"], atol=1e-4
    )
    np.testing.assert_array_equal(
        tiny.obsp["mnn_corrected_pairs"].toarray(), default.obsp["mnn_corrected_pairs"].toarray()
    )


def test_low_rank_form_is_the_dense_layer_exactly(small):
    adata, _ = small
    dense = sm.pp.mnn_correct(adata, "batch", copy=True, **QUICK)
    low = sm.pp.mnn_correct(adata, "batch", copy=True, dense_layer=False, **QUICK)
    assert (
        "mnn_corrected" not in low.layers
        and low.uns["mnn_corrected"]["params"]["dense_layer"] is False
    )
    basis = low.varm["mnn_corrected_basis"]
    np.testing.assert_allclose(basis.T @ basis, np.eye(basis.shape[1]), atol=1e-5)
    exported = np.vstack([block for _, block in sm.pp.corrected_expression(low, chunk_size=100)])
    np.testing.assert_allclose(exported, dense.layers["mnn_corrected"], atol=1e-5)
    # The model reads the low-rank form per minibatch and learns the same latent, up to
    # the float32 rounding of the input (1e-5 above) grown over training.
    latents = [_pipeline_latent(data) for data in (dense, low)]
    np.testing.assert_allclose(latents[0], latents[1], atol=1e-3)


def test_missing_corrected_expression_says_what_to_run(small):
    adata, _ = small
    data = adata.copy()
    with pytest.raises(KeyError, match=r"Run scetm_mnn.pp.mnn_correct\(adata, batch_key"):
        BatchCorrectedSCETM.setup_anndata(data, layer="counts", corrected_layer="nope")
    with pytest.raises(KeyError, match="No corrected expression 'nope'"):
        next(sm.pp.corrected_expression(data, "nope"))


def test_backed_h5ad_gives_the_in_memory_result(small, tmp_path):
    adata, path = small
    memory = sm.pp.mnn_correct(adata, "batch", copy=True, dense_layer=False, **QUICK)
    backed = ad.read_h5ad(path, backed="r")
    sm.pp.mnn_correct(backed, "batch", dense_layer=False, **QUICK)
    assert backed.isbacked  # X stayed on disk; the results were added in memory
    np.testing.assert_allclose(
        backed.obsm["mnn_corrected_shift"], memory.obsm["mnn_corrected_shift"], atol=1e-5
    )
    with pytest.raises(ValueError, match="copy=True would load the whole backed AnnData"):
        sm.pp.mnn_correct(backed, "batch", copy=True, **QUICK)

    # Train on the backed file (counts layer and corrected input read from disk) and in memory.
    memory.write_h5ad(tmp_path / "corrected.h5ad")
    on_disk = ad.read_h5ad(tmp_path / "corrected.h5ad", backed="r")
    latents = [_pipeline_latent(data) for data in (memory, on_disk)]
    assert rows_of(on_disk, "counts").on_disk
    np.testing.assert_allclose(latents[1], latents[0], atol=1e-5)


def test_preprocess_refuses_a_backed_anndata_with_the_way_out(small):
    _, path = small
    backed = ad.read_h5ad(path, backed="r")
    with pytest.raises(ValueError, match=r"adata.to_memory\(\)"):
        sm.pp.preprocess(backed)


def test_simulate_in_chunks_is_seeded_and_can_go_to_disk(monkeypatch, tmp_path):
    kwargs = {"n_cells": 900, "n_genes": 120, "n_batches": 3, "random_state": 5}
    whole = sm.datasets.simulate(**kwargs)  # one chunk: the data of an unchunked draw
    monkeypatch.setattr(_simulate, "SIMULATE_CHUNK", 250)
    first, second = sm.datasets.simulate(**kwargs), sm.datasets.simulate(**kwargs)
    assert (first.X != second.X).nnz == 0 and first.obs.equals(whole.obs)
    assert (first.X != whole.X).nnz > 0  # chunks draw in another order: other counts...
    np.testing.assert_allclose(  # ...from the same model
        first.X.sum() / whole.X.sum(), 1.0, atol=0.02
    )
    on_disk = sm.datasets.simulate(**kwargs, filename=tmp_path / "sim.h5ad")
    assert on_disk.isbacked and (on_disk.X[:] != first.X).nnz == 0
    assert on_disk.obs.equals(first.obs) and on_disk.var.equals(first.var)


def test_simulate_to_disk_holds_one_chunk(monkeypatch, tmp_path):
    monkeypatch.setattr(_simulate, "SIMULATE_CHUNK", 500)
    kwargs = {"n_cells": 40_000, "n_genes": 300, "n_batches": 2, "random_state": 1}
    tracemalloc.start()
    on_disk = sm.datasets.simulate(**kwargs, filename=tmp_path / "big.h5ad")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    nnz = on_disk.X.group["data"].shape[0]
    # The result alone is 8 bytes per non-zero in memory; writing it holds about a chunk.
    assert peak < 0.25 * 8 * nnz, (peak, nnz)


def test_sparse_input_is_never_densified():
    """mnn_correct on sparse 20k × 2000 keeps its peak below half a dense copy."""
    adata = sm.datasets.simulate(n_cells=20_000, n_genes=2000, n_batches=4, random_state=0)
    sm.pp.preprocess(adata, n_top_genes=2000)
    assert sparse.issparse(adata.X)
    dense_bytes = adata.n_obs * adata.n_vars * 4
    tracemalloc.start()
    sm.pp.mnn_correct(
        adata, "batch", max_epochs=1, pairs_per_epoch=256, search_rounds=1, n_blocks=1
    )
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert "mnn_corrected" not in adata.layers  # above DENSE_LAYER_MAX_BYTES: low-rank only
    assert adata.obsm["mnn_corrected_shift"].shape == (adata.n_obs, 50)
    assert peak < dense_bytes / 2, f"peak {peak / 2**20:.0f} MiB"
