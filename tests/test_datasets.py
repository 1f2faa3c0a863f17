"""Tests for the Baron pancreas loader: GEO CSV parsing, search order, download, real data."""

from __future__ import annotations

import gzip

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import requests
from scipy import sparse

from scetm_mnn.datasets import _baron, baron_pancreas

GENES = ["A1BG", "GCG", "INS", "Pisd", "Pisd"]  # a duplicated gene, as in GEO's mouse file
TYPES = ["beta", "alpha", "ductal"]


def write_geo_csv(directory, gsm: str, donor: str, n_cells: int, seed: int = 0) -> np.ndarray:
    """Write a gzip CSV in GEO's ``*_umifm_counts.csv.gz`` format; return its counts."""
    counts = np.random.default_rng(seed).poisson(2.0, size=(n_cells, len(GENES)))
    directory.mkdir(parents=True, exist_ok=True)
    with gzip.open(directory / f"{gsm}_{donor}_umifm_counts.csv.gz", "wt") as handle:
        handle.write(",barcode,assigned_cluster," + ",".join(GENES) + "\n")
        for i, row in enumerate(counts):
            cells = [f"{donor}_lib1.final_cell_{i:04d}", f"ACGT-{i:04d}", TYPES[i % 3]]
            handle.write(",".join(cells + [str(v) for v in row]) + "\n")
    return counts


def write_h5ad(directory, species: str, n_cells: int = 5) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    obs = pd.DataFrame(
        {"donor": ["h5ad_donor"] * n_cells, "cell_type1": ["beta"] * n_cells},
        index=[f"c{i}" for i in range(n_cells)],
    )
    adata = ad.AnnData(X=sparse.csr_matrix(np.ones((n_cells, 3), np.float32)), obs=obs)
    adata.write_h5ad(directory / f"baron_{species}.h5ad")


@pytest.fixture
def isolated(monkeypatch, tmp_path):
    """No $SCETM_MNN_DATA, an empty cache and no network."""
    monkeypatch.delenv(_baron.DATA_ENV, raising=False)
    monkeypatch.setattr(_baron, "_cache_dir", lambda: tmp_path / "cache")

    def offline(*args, **kwargs):
        raise requests.exceptions.ConnectionError("Failed to resolve 'ftp.ncbi.nlm.nih.gov'")

    monkeypatch.setattr(_baron.pooch, "retrieve", offline)
    return tmp_path


def test_read_geo_csv_in_chunks(tmp_path):
    counts = write_geo_csv(tmp_path, "GSM2230757", "human1", n_cells=7)
    adata = _baron._read_umifm_csv(
        tmp_path / "GSM2230757_human1_umifm_counts.csv.gz", donor="human1", chunksize=3
    )
    assert adata.shape == (7, len(GENES))
    assert sparse.isspmatrix_csr(adata.X)
    np.testing.assert_array_equal(adata.X.toarray(), counts)
    assert adata.obs_names[0] == "human1_lib1.final_cell_0000"
    assert list(adata.obs["assigned_cluster"][:3]) == TYPES
    assert (adata.obs["donor"] == "human1").all()
    assert adata.var_names.is_unique


def test_baron_from_geo_csvs(isolated):
    data = isolated / "data" / "GSE84133_RAW"
    c1 = write_geo_csv(data, "GSM2230761", "mouse1", n_cells=6, seed=1)
    c2 = write_geo_csv(data, "GSM2230762", "mouse2", n_cells=4, seed=2)
    write_geo_csv(data, "GSM2230757", "human1", n_cells=3)  # another species: ignored
    adata = baron_pancreas("mouse", data_dir=isolated / "data", download=False)
    assert adata.shape == (10, len(GENES))
    assert list(adata.obs["batch"].cat.categories) == ["mouse1", "mouse2"]
    assert list(adata.obs["batch"].value_counts().sort_index()) == [6, 4]
    assert set(adata.obs["cell_type"].cat.categories) == set(TYPES)
    assert sparse.isspmatrix_csr(adata.X)
    np.testing.assert_array_equal(adata.X.toarray(), np.vstack([c1, c2]))


def test_search_order(isolated, monkeypatch):
    first, env = isolated / "first", isolated / "env"
    write_h5ad(env / "baron_pancreas", "human")
    monkeypatch.setenv(_baron.DATA_ENV, str(env))
    # Only the env folder has data.
    assert baron_pancreas("human", data_dir=first).obs["batch"].iloc[0] == "h5ad_donor"
    # data_dir comes before $SCETM_MNN_DATA, even when it holds only CSVs.
    write_geo_csv(first, "GSM2230757", "human1", n_cells=3)
    assert list(baron_pancreas("human", data_dir=first).obs["batch"].unique()) == ["human1"]
    # Within one folder, an h5ad comes before the CSVs.
    write_h5ad(first, "human")
    assert baron_pancreas("human", data_dir=first).obs["batch"].iloc[0] == "h5ad_donor"


def test_download_and_cache(isolated, monkeypatch):
    extracted = isolated / "cache" / "GSE84133_RAW.tar.untar"
    write_geo_csv(extracted, "GSM2230761", "mouse1", n_cells=5)
    write_geo_csv(extracted, "GSM2230757", "human1", n_cells=3)
    calls = []

    def fake_retrieve(url, **kwargs):
        calls.append((url, kwargs))
        return [str(p) for p in sorted(extracted.iterdir())]

    monkeypatch.setattr(_baron.pooch, "retrieve", fake_retrieve)
    adata = baron_pancreas("mouse")
    assert adata.shape == (5, len(GENES))
    assert calls[0][0] == _baron.GEO_URL
    assert calls[0][1]["path"] == isolated / "cache"
    assert (isolated / "cache" / "baron_mouse.h5ad").exists()
    again = baron_pancreas("mouse")  # the parsed copy in the cache: no second download
    assert len(calls) == 1
    np.testing.assert_array_equal(again.X.toarray(), adata.X.toarray())


def test_offline_error_is_clear(isolated):
    with pytest.raises(FileNotFoundError, match="SCETM_MNN_DATA") as info:
        baron_pancreas("human", data_dir=isolated / "empty")
    message = str(info.value)
    assert "downloading" in message
    assert "data_dir" in message
    assert "umifm_counts.csv.gz" in message
    assert isinstance(info.value.__cause__, requests.exceptions.ConnectionError)


def test_no_download(isolated):
    with pytest.raises(FileNotFoundError, match="No Baron mouse data found"):
        baron_pancreas("mouse", data_dir=isolated / "empty", download=False)


def test_bad_species():
    with pytest.raises(ValueError, match="species"):
        baron_pancreas("zebrafish")


def _check_real(adata, shape, n_batches, n_types):
    assert adata.shape == shape
    assert adata.obs["batch"].nunique() == n_batches
    assert adata.obs["cell_type"].nunique() == n_types
    assert sparse.isspmatrix_csr(adata.X)
    values = adata.X.data
    assert values.min() >= 0 and np.all(values == np.round(values))


def test_real_human(baron_human):
    _check_real(baron_human, (2142, 20125), 4, 14)


def test_real_mouse(baron_mouse):
    _check_real(baron_mouse, (1886, 14877), 2, 13)
