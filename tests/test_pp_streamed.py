"""Preprocessing streamed from disk into a new file, and the pipeline on counts left on disk."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

import scetm_mnn as sm
from scetm_mnn import _disk
from scetm_mnn._pipeline import DATA_FILE, run_pipeline
from scetm_mnn._rows import is_on_disk, rows_of
from scetm_mnn.model import BatchCorrectedSCETM
from scetm_mnn.pp import _hvg

QUICK = {"max_epochs": 3, "pairs_per_epoch": 256, "search_rounds": 2}


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    """1,500 simulated cells × 300 genes on disk, read-only, with cells and genes to filter."""
    adata = sm.datasets.simulate(n_cells=1500, n_genes=300, n_batches=3, random_state=2)
    x = adata.X.tolil()
    x[7, :] = 0  # an empty cell: filtered out
    x[:, 11] = 0  # a gene in no cell, and one in 2 cells: filtered out
    x[:, 12] = 0
    x[3, 12], x[9, 12] = 4, 1
    adata.X = x.tocsr()
    adata.X.eliminate_zeros()
    adata.obsm["X_other"] = np.random.default_rng(0).normal(size=(adata.n_obs, 2))
    path = tmp_path_factory.mktemp("streamed") / "raw.h5ad"
    adata.write_h5ad(path)
    os.chmod(path, 0o444)
    return adata, path


def _assert_same(streamed: ad.AnnData, memory: ad.AnnData) -> None:
    assert streamed.isbacked and streamed.shape == memory.shape
    assert (streamed.X[:] != memory.X).nnz == 0 and streamed.X.dtype == memory.X.dtype
    counts = streamed.layers["counts"]  # left on disk, as X is
    assert rows_of(streamed, "counts").on_disk and is_on_disk(counts)
    assert (counts[:] != memory.layers["counts"]).nnz == 0
    assert counts.dtype == memory.layers["counts"].dtype
    pd.testing.assert_frame_equal(streamed.obs, memory.obs)
    pd.testing.assert_frame_equal(streamed.var, memory.var)
    np.testing.assert_array_equal(streamed.obsm["X_other"], memory.obsm["X_other"])
    np.testing.assert_array_equal(streamed.varm["batch_log_fold"], memory.varm["batch_log_fold"])
    assert streamed.uns["hvg"] == memory.uns["hvg"] and streamed.uns["log1p"] == {"base": None}


@pytest.mark.parametrize("hvg_sample", [False, True], ids=["all cells", "HVG sample"])
def test_streamed_preprocessing_is_the_in_memory_result(raw, tmp_path, monkeypatch, hvg_sample):
    adata, path = raw
    if hvg_sample:  # the statistics from a seeded sample of the cells, both ways
        monkeypatch.setattr(_hvg, "HVG_MAX_CELLS", 600)
    monkeypatch.setattr("scetm_mnn._rows.CHUNK_SIZE", 256)  # several chunks
    before = _digest(path)
    memory = sm.pp.preprocess(adata, n_top_genes=120, batch_key="batch", copy=True)
    backed = ad.read_h5ad(path, backed="r")
    streamed = sm.pp.preprocess(
        backed, n_top_genes=120, batch_key="batch", filename=tmp_path / "pre.h5ad"
    )
    assert memory.n_obs == adata.n_obs - 1 and "gene_11" not in memory.var_names
    _assert_same(streamed, memory)
    assert _digest(path) == before  # the input is only read
    assert not list(tmp_path.glob(".pre.h5ad*"))  # no temporary left beside the file


def test_a_backed_anndata_without_filename_is_refused_with_the_way_out(raw):
    _, path = raw
    with pytest.raises(ValueError, match=r"Pass `filename=` a new \.h5ad"):
        sm.pp.preprocess(ad.read_h5ad(path, backed="r"))


def test_backed_data_without_raw_counts_get_the_in_memory_error(raw, tmp_path):
    adata, _ = raw
    logged = adata.copy()
    sm.pp.preprocess(logged, n_top_genes=100)  # X now log-normalized
    del logged.layers["counts"]
    logged.write_h5ad(tmp_path / "logged.h5ad")
    with pytest.raises(ValueError) as in_memory:
        sm.pp.preprocess(logged.copy(), copy=True)
    with pytest.raises(ValueError) as on_disk:
        sm.pp.preprocess(
            ad.read_h5ad(tmp_path / "logged.h5ad", backed="r"), filename=tmp_path / "p.h5ad"
        )
    assert str(on_disk.value) == str(in_memory.value)
    assert "does not hold raw counts" in str(on_disk.value)
    assert not (tmp_path / "p.h5ad").exists()


def _no_free_space(monkeypatch):
    """A disk with 1,000 bytes free, as ``shutil.disk_usage`` reports it."""
    monkeypatch.setattr(_disk.shutil, "disk_usage", lambda path: _Usage(1000))


class _Usage:
    def __init__(self, free: int):
        self.free = free


def test_too_little_disk_is_refused_before_anything_is_written(raw, tmp_path, monkeypatch):
    adata, _ = raw
    _no_free_space(monkeypatch)
    with pytest.raises(OSError, match="Not enough free disk space to write the simulation") as err:
        sm.datasets.simulate(n_cells=2000, n_genes=100, filename=tmp_path / "sim.h5ad")
    assert err.value.errno == errno.ENOSPC
    with pytest.raises(OSError, match="the preprocessed data"):
        sm.pp.preprocess(adata, n_top_genes=100, filename=tmp_path / "pre.h5ad")
    assert list(tmp_path.iterdir()) == []  # not even a temporary file


def test_the_simulator_writes_what_it_returns_in_memory(tmp_path):
    kwargs = {"n_cells": 700, "n_genes": 90, "n_batches": 2, "random_state": 4}
    on_disk = sm.datasets.simulate(**kwargs, filename=tmp_path / "sim.h5ad")
    memory = sm.datasets.simulate(**kwargs)
    assert (on_disk.X[:] != memory.X).nnz == 0 and on_disk.obs.equals(memory.obs)
    assert sparse.issparse(on_disk.X[:5]) and on_disk.isbacked
    # int64 offsets, so that appending can go past 2³¹ non-zeros (5M cells hold 3.4 billion)
    assert on_disk.file._file["X/indptr"].dtype == np.int64


@pytest.fixture
def needed(monkeypatch):
    """The bytes each disk check asked for, by what it checked (``simulate``, ``preprocess``)."""
    asked: dict[str, list[int]] = {}
    for module, name in (
        ("scetm_mnn.datasets._simulate", "simulate"),
        ("scetm_mnn.pp._streamed", "preprocess"),
    ):

        def record(path, need, what="", fix="", name=name):
            asked.setdefault(name, []).append(need)
            assert "compression='lzf'" in fix or "compression" not in fix

        monkeypatch.setattr(f"{module}.check_free_space", record)
    return asked


def test_compressed_files_hold_the_same_values_in_a_third_of_the_space(raw, tmp_path, needed):
    adata, path = raw
    kwargs = {"n_cells": 3000, "n_genes": 200, "n_batches": 2, "random_state": 4}
    files = {}
    for compression in (None, "lzf"):
        folder = tmp_path / str(compression)
        simulated = sm.datasets.simulate(
            **kwargs, filename=folder / "sim.h5ad", compression=compression
        )
        streamed = sm.pp.preprocess(
            ad.read_h5ad(path, backed="r"),
            n_top_genes=120,
            batch_key="batch",
            filename=folder / "pre.h5ad",
            compression=compression,
        )
        files[compression] = (simulated, streamed)
        for written in files[compression]:
            assert written.file._file["X/data"].compression == compression
    memory = sm.pp.preprocess(adata, n_top_genes=120, batch_key="batch", copy=True)
    _assert_same(files["lzf"][1], memory)
    assert (files["lzf"][0].X[:] != files[None][0].X[:]).nnz == 0
    for i, name in enumerate(("simulate", "preprocess")):
        plain, small = (Path(files[c][i].filename).stat().st_size for c in (None, "lzf"))
        assert small < 0.6 * plain
        # The disk checks: the compressed estimate covers the file and is as much smaller.
        asked_plain, asked_small = needed[name]
        assert small <= asked_small < 0.7 * asked_plain and plain <= asked_plain


def test_an_unknown_compression_is_refused_before_any_work(raw, tmp_path):
    _, path = raw
    with pytest.raises(ValueError, match=r"compression='zstd' is not an HDF5 filter.*'lzf'"):
        sm.datasets.simulate(n_cells=100, filename=tmp_path / "s.h5ad", compression="zstd")
    with pytest.raises(ValueError, match=r"compression='zstd'"):
        backed = ad.read_h5ad(path, backed="r")
        sm.pp.preprocess(backed, filename=tmp_path / "p.h5ad", compression="zstd")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ the pipeline on disk
def _run(data, out, **kwargs):
    return run_pipeline(
        data,
        "batch",
        "cell_type",
        out=out,
        n_top_genes=120,
        max_epochs=3,
        report=False,
        correct_kwargs=QUICK,
        **kwargs,
    )


@pytest.fixture(scope="module")
def runs(raw, tmp_path_factory):
    """The pipeline on the read-only file opened backed, and on the same data in memory."""
    adata, path = raw
    before = _digest(path)
    root = tmp_path_factory.mktemp("runs")
    backed = _run(ad.read_h5ad(path, backed="r"), root / "backed")
    memory = _run(adata.copy(), root / "memory")
    return backed, memory, root, _digest(path) == before


def test_the_pipeline_on_disk_gives_the_in_memory_run(runs):
    backed, memory, root, unchanged = runs
    assert unchanged  # the read-only input's bytes
    assert backed.adata.isbacked and not memory.adata.isbacked
    np.testing.assert_allclose(
        backed.adata.obsm["X_scetm_mnn"], memory.adata.obsm["X_scetm_mnn"], atol=1e-5
    )
    pd.testing.assert_frame_equal(backed.sweep, memory.sweep)
    assert not (root / "memory" / DATA_FILE).exists()  # in memory: no data file


def test_the_run_on_disk_writes_its_results_into_its_data_file(runs):
    backed, _, root, _ = runs
    assert backed.files["data"] == root / "backed" / DATA_FILE
    saved = ad.read_h5ad(backed.files["data"], backed="r")
    for key in ("X_scetm_mnn", "X_topics", "X_mnn_corrected", "mnn_corrected_shift"):
        np.testing.assert_array_equal(saved.obsm[key], backed.adata.obsm[key])
    assert "mnn_corrected_basis" in saved.varm and "counts" in saved.file["layers"]
    model = BatchCorrectedSCETM.load(root / "backed" / "model", adata=saved)
    assert model.is_trained


def test_a_run_on_disk_resumes_from_its_data_file(raw, runs, tmp_path, monkeypatch):
    _, path = raw
    backed, *_ = runs
    train = BatchCorrectedSCETM.train

    def crash(self, *args, **kwargs):
        raise RuntimeError("killed")

    monkeypatch.setattr(BatchCorrectedSCETM, "train", crash)
    with pytest.raises(RuntimeError, match="killed"):
        _run(ad.read_h5ad(path, backed="r"), tmp_path)
    monkeypatch.setattr(BatchCorrectedSCETM, "train", train)
    monkeypatch.setattr(sm.pp, "preprocess", crash)  # resumed after the correction
    monkeypatch.setattr(sm.pp, "mnn_correct", crash)
    resumed = _run(ad.read_h5ad(path, backed="r"), tmp_path, resume=True)
    assert resumed.adata.isbacked
    np.testing.assert_allclose(
        resumed.adata.obsm["X_scetm_mnn"], backed.adata.obsm["X_scetm_mnn"], atol=1e-5
    )


def test_the_command_line_on_a_read_only_file_writes_only_into_out(raw, tmp_path):
    from scetm_mnn.cli import main

    _, path = raw
    before = _digest(path)
    argv = ["run", str(path), "--batch-key", "batch", "--label-key", "cell_type"]
    argv += ["--compression", "lzf"]  # the streamed file compressed, the results the same
    assert main([*argv, "--out", str(tmp_path / "o"), "--max-epochs", "2"]) == 0
    assert _digest(path) == before
    result = tmp_path / "o" / f"{path.stem}_scetm_mnn.h5ad"
    assert not (tmp_path / "o" / DATA_FILE).exists()  # renamed into the result, not copied
    saved = ad.read_h5ad(result, backed="r")
    assert {"X_scetm_mnn", "X_topics"} <= set(saved.obsm) and "counts" in saved.layers
    assert saved.file._file["layers/counts/data"].compression == "lzf"
    assert (tmp_path / "o" / "report.html").stat().st_size > 0


def test_long_passes_show_progress_bars_and_short_ones_none(raw, tmp_path, monkeypatch, capsys):
    from scetm_mnn import _progress

    adata, _ = raw
    sm.pp.preprocess(adata, n_top_genes=100, filename=tmp_path / "quiet.h5ad")
    assert "preprocess:" not in capsys.readouterr().err  # 1,500 cells: seconds, no bar
    monkeypatch.setattr(_progress, "PROGRESS_MIN_CELLS", 1000)
    sm.pp.preprocess(adata, n_top_genes=100, filename=tmp_path / "shown.h5ad")
    err = capsys.readouterr().err
    for name in ("preprocess: filters", "preprocess: HVG sample", "preprocess: writing"):
        assert name in err and "1.50k/1.50k" in err, name
