"""Tests for the evaluation metrics: Leiden sweeps, batch mixing, scib-metrics wrapper."""

from __future__ import annotations

import importlib.util
import logging
import sys

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from scetm_mnn import tl

N_TYPES, N_BATCHES, PER_GROUP = 4, 2, 60


@pytest.fixture(scope="module")
def blobs() -> ad.AnnData:
    """Four well-separated cell-type blobs, two batches, with several embeddings.

    - ``X_mixed``: blobs by cell type only; batches perfectly mixed.
    - ``X_split``: blobs by (cell type, batch); batches fully separated.
    - ``X_batch``: blobs by batch only; clusters follow batches.
    - ``X_noisy``: overlapping blobs, so Leiden's result depends on its seed.
    """
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(N_TYPES), N_BATCHES * PER_GROUP)
    batches = np.tile(np.repeat(np.arange(N_BATCHES), PER_GROUP), N_TYPES)
    n, dim = labels.size, 10
    type_centers = 30.0 * np.eye(N_TYPES, dim)
    batch_shift = 30.0 * np.eye(N_BATCHES, dim, k=N_TYPES)
    noise = rng.normal(size=(n, dim))
    obs = pd.DataFrame(
        {"cell_type": [f"type{i}" for i in labels], "batch": [f"b{i}" for i in batches]},
        index=[f"cell{i}" for i in range(n)],
    )
    obsm = {
        "X_mixed": type_centers[labels] + noise,
        "X_split": type_centers[labels] + batch_shift[batches] + noise,
        "X_batch": batch_shift[batches] + noise,
        "X_noisy": type_centers[labels] / 12 + noise,
    }
    return ad.AnnData(obs=obs, obsm={k: v.astype(np.float32) for k, v in obsm.items()})


def snapshot(adata: ad.AnnData) -> tuple:
    return (
        adata.obs.copy(),
        sorted(adata.obsm.keys()),
        sorted(adata.uns.keys()),
        {k: v.copy() for k, v in adata.obsm.items()},
    )


def assert_unchanged(adata: ad.AnnData, before: tuple) -> None:
    obs, obsm_keys, uns_keys, obsm = before
    pd.testing.assert_frame_equal(adata.obs, obs)
    assert sorted(adata.obsm.keys()) == obsm_keys
    assert sorted(adata.uns.keys()) == uns_keys
    for key, value in obsm.items():
        np.testing.assert_array_equal(adata.obsm[key], value)


@pytest.fixture(scope="module")
def mixed_sweep(blobs) -> pd.DataFrame:
    return tl.leiden_sweep(blobs, "X_mixed", "cell_type", "batch")


def test_default_grid():
    grid = tl.DEFAULT_RESOLUTIONS
    assert len(grid) == 17
    assert min(grid) == 0.02 and max(grid) == 1.0
    assert list(grid) == sorted(set(grid))
    assert {0.1, 0.13, 0.19, 0.22, 0.25, 0.28} <= set(grid)


def test_sweep_table(mixed_sweep):
    assert list(mixed_sweep.columns) == ["resolution", "n_clusters", "ARI", "NMI", "bARI"]
    assert list(mixed_sweep["resolution"]) == list(tl.DEFAULT_RESOLUTIONS)
    assert (mixed_sweep["n_clusters"] >= 1).all()


def test_perfect_clusters_give_ari_one(blobs, mixed_sweep):
    summary = tl.sweep_summary(mixed_sweep)
    assert summary["best_ARI"] == pytest.approx(1.0)
    assert summary["best_NMI"] == pytest.approx(1.0)
    assert summary["n_clusters_at_best_ARI"] == N_TYPES
    # Clusters equal to the cell types reach the floor, ~0 as types are balanced by batch.
    floor = tl.label_batch_ari(blobs, "cell_type", "batch")
    assert floor == pytest.approx(0.0, abs=0.01)
    assert summary["bARI_at_best_ARI"] == pytest.approx(floor)
    assert summary["mean_ARI"] <= summary["best_ARI"]
    best = mixed_sweep.loc[mixed_sweep["ARI"].idxmax(), "resolution"]
    assert summary["best_resolution"] == best


def test_batch_aligned_clusters_have_high_bari(blobs):
    df = tl.leiden_sweep(blobs, "X_batch", "cell_type", "batch", resolutions=[0.02, 0.05])
    assert df["bARI"].max() == pytest.approx(1.0)
    assert df["ARI"].max() < 0.1


def test_sweep_is_reproducible(blobs):
    kwargs = {"resolutions": [0.3, 1.0], "random_state": 3}
    first = tl.leiden_sweep(blobs, "X_noisy", "cell_type", "batch", **kwargs)
    second = tl.leiden_sweep(blobs, "X_noisy", "cell_type", "batch", **kwargs)
    pd.testing.assert_frame_equal(first, second)


def test_sweep_leaves_adata_unchanged(blobs):
    before = snapshot(blobs)
    tl.leiden_sweep(blobs, "X_split", "cell_type", "batch", resolutions=[0.1])
    assert_unchanged(blobs, before)


def test_sweep_key_added(blobs):
    adata = blobs.copy()
    df = tl.leiden_sweep(
        adata, "X_mixed", "cell_type", "batch", resolutions=[0.05, 1.0], key_added="best"
    )
    assert adata.obs["best"].dtype == "category"
    assert adata.obs["best"].nunique() == df["n_clusters"][df["ARI"].idxmax()]
    pd.testing.assert_frame_equal(adata.uns["best_sweep"], df)


def test_label_batch_ari_confounded(blobs):
    adata = blobs.copy()
    adata.obs["batch"] = adata.obs["cell_type"]
    assert tl.label_batch_ari(adata, "cell_type", "batch") == pytest.approx(1.0)


def test_summary_rejects_other_tables():
    with pytest.raises(KeyError, match="bARI"):
        tl.sweep_summary(pd.DataFrame({"resolution": [0.1], "ARI": [1.0]}))


def test_integration_metrics_mixed_vs_split(blobs):
    before = snapshot(blobs)
    mixed = tl.integration_metrics(blobs, "X_mixed", "cell_type", "batch")
    split = tl.integration_metrics(blobs, "X_split", "cell_type", "batch")
    assert_unchanged(blobs, before)
    assert mixed["batch_entropy"] > 0.9
    assert mixed["kbet_acceptance"] > 0.8
    assert split["batch_entropy"] < 0.05
    assert split["kbet_acceptance"] < 0.05
    for result in (mixed, split):
        assert result["silhouette_label"] > 0.5
        assert 0.5 < result["asw_label"] <= 1.0
    assert mixed["asw_batch"] > 0.9 > split["asw_batch"]
    assert mixed["silhouette_batch"] < 0.05 < split["silhouette_batch"]


def test_integration_metrics_needs_two_batches(blobs):
    adata = blobs.copy()
    adata.obs["batch"] = "only"
    with pytest.raises(ValueError, match="one batch"):
        tl.integration_metrics(adata, "X_mixed", "cell_type", "batch")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"use_rep": "X_missing"}, "use_rep='X_missing'"),
        ({"label_key": "celltype"}, "label_key='celltype'"),
        ({"batch_key": "donor"}, "batch_key='donor'"),
    ],
)
@pytest.mark.parametrize("func", [tl.leiden_sweep, tl.integration_metrics])
def test_bad_keys(blobs, func, kwargs, match):
    args = {"use_rep": "X_mixed", "label_key": "cell_type", "batch_key": "batch", **kwargs}
    with pytest.raises(KeyError, match=match):
        func(blobs, **args)


def test_scib_missing_gives_install_hint(blobs, monkeypatch):
    monkeypatch.setitem(sys.modules, "scib_metrics", None)
    monkeypatch.setitem(sys.modules, "scib_metrics.benchmark", None)
    with pytest.raises(ImportError, match=r'pip install "scetm-mnn\[bench\]"'):
        tl.scib_benchmark(blobs, ["X_mixed"], "cell_type", "batch")


@pytest.mark.skipif(
    importlib.util.find_spec("scib_metrics") is None, reason="scib-metrics not installed"
)
def test_scib_benchmark(blobs):
    before = snapshot(blobs)
    results = tl.scib_benchmark(
        blobs,
        ["X_mixed", "X_split"],
        "cell_type",
        "batch",
        pre_integrated="X_split",
        batch_correction={"kbet_per_label": False},  # its pynndescent compilation is slow
    )
    assert_unchanged(blobs, before)
    assert {"X_mixed", "X_split", "Metric Type"} <= set(results.index)
    assert {"Leiden ARI", "Leiden NMI", "iLISI", "Total"} <= set(results.columns)
    assert "KMeans ARI" not in results.columns
    assert results.loc["X_mixed", "Leiden ARI"] == pytest.approx(1.0)
    assert results.loc["X_mixed", "iLISI"] > results.loc["X_split", "iLISI"]


def test_batch_entropy_is_the_metric_alone(blobs):
    for rep in ("X_mixed", "X_split"):
        metrics = tl.integration_metrics(blobs, rep, "cell_type", "batch", n_neighbors=30)
        assert tl.batch_entropy(blobs, rep, "batch") == pytest.approx(metrics["batch_entropy"])
    assert tl.batch_entropy(blobs, "X_mixed", "batch") > 0.9
    assert tl.batch_entropy(blobs, "X_split", "batch") < 0.1
    with pytest.raises(ValueError, match="n_neighbors"):
        tl.batch_entropy(blobs, "X_mixed", "batch", n_neighbors=0)


def test_stratified_subsample_keeps_every_group():
    rng = np.random.default_rng(0)
    n = 5000
    obs = pd.DataFrame(
        {
            "batch": pd.Categorical(rng.choice(["a", "b", "c"], size=n, p=[0.6, 0.3, 0.1])),
            "cell_type": pd.Categorical(rng.choice(["x", "y"], size=n, p=[0.95, 0.05])),
        },
        index=[f"c{i}" for i in range(n)],
    )
    obs.iloc[:2, 1] = "y"
    obs["cell_type"] = obs["cell_type"].cat.add_categories("rare")
    obs.iloc[7, 1] = "rare"  # a group of one cell
    adata = ad.AnnData(obs=obs)
    keep = tl.stratified_subsample(adata, ["batch", "cell_type"], max_cells=500)
    assert 500 <= len(keep) <= 500 + 7  # at most one extra cell per group
    assert np.all(np.diff(keep) > 0) and keep.min() >= 0 and keep.max() < n
    full = obs.groupby(["batch", "cell_type"], observed=True).size()
    sub = obs.iloc[keep].groupby(["batch", "cell_type"], observed=True).size()
    assert set(sub.index) == set(full.index)  # every batch × type, the single cell too
    np.testing.assert_allclose(sub / sub.sum(), full / full.sum(), atol=0.01)
    again = tl.stratified_subsample(adata, ["batch", "cell_type"], 500)
    np.testing.assert_array_equal(keep, again)
    assert not np.array_equal(keep, tl.stratified_subsample(adata, "batch", 500, random_state=1))
    np.testing.assert_array_equal(tl.stratified_subsample(adata, "batch", n), np.arange(n))
    with pytest.raises(ValueError, match="max_cells"):
        tl.stratified_subsample(adata, "batch", 0)
    with pytest.raises(KeyError, match="donor"):
        tl.stratified_subsample(adata, ["donor"], 10)


@pytest.fixture(scope="module")
def rare(blobs) -> ad.AnnData:
    """``blobs`` with type3 cut to two cells per batch: 364 cells, one rare cell type."""
    obs = blobs.obs
    is_type3 = (obs["cell_type"] == "type3").to_numpy()
    rank = obs.groupby(["cell_type", "batch"], observed=True).cumcount().to_numpy()
    return blobs[~is_type3 | (rank < 2)].copy()


def test_sweep_on_a_subsample(rare, caplog):
    adata = rare.copy()
    kwargs = {"resolutions": [0.05, 0.5], "random_state": 2, "subsample": 100}
    with caplog.at_level(logging.INFO, logger="scetm_mnn.tl"):
        df = tl.leiden_sweep(adata, "X_mixed", "cell_type", "batch", key_added="best", **kwargs)
    keep = tl.stratified_subsample(adata, ["batch", "cell_type"], 100, random_state=2)
    assert df.attrs == {"n_cells": len(keep), "n_obs": 364}
    assert 100 <= len(keep) <= 100 + 8  # at most one extra cell per batch × type
    assert f"on a stratified subsample of {len(keep)} of 364 cells" in caplog.text
    # The clusters exist for the drawn cells only: the documented stratified draw.
    drawn = adata.obs["best"].notna().to_numpy()
    np.testing.assert_array_equal(np.flatnonzero(drawn), keep)
    assert adata.obs["best"].dtype == "category"
    assert adata.obs["best"][drawn].nunique() == df["n_clusters"][df["ARI"].idxmax()]
    # The rare type is kept in both batches, and found: the blobs separate every type.
    rare_drawn = adata.obs[drawn].query("cell_type == 'type3'")
    assert set(rare_drawn["batch"]) == {"b0", "b1"}
    assert df["ARI"].max() == pytest.approx(1.0)
    # Seeded: the same call gives the same table and cells, another seed other cells.
    again = rare.copy()
    pd.testing.assert_frame_equal(
        tl.leiden_sweep(again, "X_mixed", "cell_type", "batch", key_added="best", **kwargs), df
    )
    pd.testing.assert_series_equal(again.obs["best"], adata.obs["best"])
    other = rare.copy()
    tl.leiden_sweep(
        other, "X_mixed", "cell_type", "batch", key_added="best", **{**kwargs, "random_state": 3}
    )
    assert not np.array_equal(other.obs["best"].notna().to_numpy(), drawn)


def test_sweep_subsample_of_all_cells_is_the_full_sweep(rare):
    full = tl.leiden_sweep(rare, "X_noisy", "cell_type", "batch", resolutions=[0.3])
    same = tl.leiden_sweep(rare, "X_noisy", "cell_type", "batch", resolutions=[0.3], subsample=364)
    pd.testing.assert_frame_equal(full, same)
    assert full.attrs == same.attrs == {"n_cells": 364, "n_obs": 364}


@pytest.mark.parametrize(
    ("subsample", "error", "match"),
    [
        (0.25, TypeError, "subsample is a number of cells, not 0.25"),
        (True, TypeError, "number of cells"),
        (1, ValueError, "at least 2 cells"),
    ],
)
def test_sweep_rejects_a_bad_subsample(rare, subsample, error, match):
    with pytest.raises(error, match=match):
        tl.leiden_sweep(rare, "X_mixed", "cell_type", "batch", subsample=subsample)


def test_metrics_on_a_subsample_are_the_metrics_of_those_cells(rare):
    keep = tl.stratified_subsample(rare, ["batch", "cell_type"], 150, random_state=1)
    expected = tl.integration_metrics(rare[keep].copy(), "X_split", "cell_type", "batch")
    metrics = tl.integration_metrics(
        rare, "X_split", "cell_type", "batch", subsample=150, random_state=1
    )
    pd.testing.assert_series_equal(metrics, expected)
    assert metrics.attrs["n_cells"] == len(keep) and expected.attrs["n_cells"] == len(keep)
    assert tl.integration_metrics(rare, "X_split", "cell_type", "batch").attrs["n_cells"] == 364
    # batch_entropy's subsample is integration_metrics' without labels (by batch only).
    unlabelled = tl.integration_metrics(rare, "X_mixed", None, "batch", 30, subsample=150)
    entropy = tl.batch_entropy(rare, "X_mixed", "batch", subsample=150)
    assert entropy == pytest.approx(unlabelled["batch_entropy"])
    by_batch = tl.stratified_subsample(rare, "batch", 150)
    assert entropy == pytest.approx(tl.batch_entropy(rare[by_batch].copy(), "X_mixed", "batch"))
    with pytest.raises(TypeError, match="subsample is a number of cells"):
        tl.batch_entropy(rare, "X_split", "batch", subsample=0.5)
