"""``baron_pancreas(subsample=...)``: the seeded draw, and a local subsample that is that draw."""

from __future__ import annotations

import gzip

import anndata as ad
import numpy as np
import pytest
import scanpy as sc

from scetm_mnn.datasets import _baron, baron_pancreas

GENES = ["A1BG", "GCG", "INS"]
DONORS = {"human1": 7, "human2": 5, "human3": 9}  # a small stand-in for the GEO release


@pytest.fixture
def release(monkeypatch, tmp_path):
    """A GEO-format release of 21 cells in 3 donors, written in shuffled row order."""
    monkeypatch.delenv(_baron.DATA_ENV, raising=False)
    monkeypatch.setattr(_baron, "_cache_dir", lambda: tmp_path / "cache")
    monkeypatch.setattr(_baron, "DONOR_CELLS", {"human": DONORS, "mouse": {"mouse1": 3}})
    monkeypatch.setattr(_baron, "N_CELLS", {"human": sum(DONORS.values()), "mouse": 3})
    rng = np.random.default_rng(0)
    folder = tmp_path / "geo"
    folder.mkdir()
    for gsm, (donor, n) in enumerate(DONORS.items(), start=2230757):
        rows = [
            f"{donor}_lib1.final_cell_{i:04d},ACGT-{i},beta,{i},{gsm % 7},{rng.integers(9)}"
            for i in range(1, n + 1)
        ]
        rng.shuffle(rows)  # the loader must not depend on the file's row order
        with gzip.open(folder / f"GSM{gsm}_{donor}_umifm_counts.csv.gz", "wt") as handle:
            handle.write(",barcode,assigned_cluster," + ",".join(GENES) + "\n")
            handle.write("\n".join(rows) + "\n")
    return folder


def test_draw_is_scanpy_subsample_of_the_geo_order(release):
    full = baron_pancreas("human", data_dir=release, download=False)
    assert full.n_obs == 21 and "subsample" not in full.uns
    geo_order = full[np.argsort(full.obs_names)].copy()
    expected = sc.pp.subsample(geo_order, fraction=0.5, random_state=3, copy=True)

    drawn = baron_pancreas("human", data_dir=release, subsample=0.5, random_state=3)
    assert drawn.n_obs == int(0.5 * 21) == 10
    assert list(drawn.obs_names) == list(expected.obs_names)
    np.testing.assert_array_equal(drawn.X.toarray(), expected.X.toarray())
    assert drawn.uns["subsample"] == {"subsample": 0.5, "random_state": 3, "n_obs": 10, "of": 21}
    # An int is a number of cells: the same draw; another seed draws other cells.
    by_count = baron_pancreas("human", data_dir=release, subsample=10, random_state=3)
    assert list(by_count.obs_names) == list(drawn.obs_names)
    other = baron_pancreas("human", data_dir=release, subsample=10, random_state=4)
    assert list(other.obs_names) != list(drawn.obs_names)


def test_a_local_subsample_is_returned_only_as_its_own_draw(release, tmp_path):
    drawn = baron_pancreas("human", data_dir=release, subsample=0.5, random_state=3)
    folder = tmp_path / "subset" / "baron_pancreas"
    folder.mkdir(parents=True)
    on_disk = drawn.copy()
    on_disk.obs = on_disk.obs[["donor", "assigned_cluster"]]
    on_disk.uns = {}
    on_disk.write_h5ad(folder / "baron_human_subset.h5ad")

    again = baron_pancreas("human", data_dir=folder.parent, subsample=0.5, random_state=3)
    assert list(again.obs_names) == list(drawn.obs_names)
    np.testing.assert_array_equal(again.X.toarray(), drawn.X.toarray())
    assert baron_pancreas("human", data_dir=folder.parent).n_obs == 10  # as stored
    for wrong in ({"subsample": 0.5, "random_state": 4}, {"subsample": 0.4, "random_state": 3}):
        with pytest.raises(ValueError, match="not the draw"):
            baron_pancreas("human", data_dir=folder.parent, **wrong)


@pytest.mark.parametrize(
    ("subsample", "error", "match"),
    [
        (0.0, ValueError, r"\(0, 1\]"),
        (1.5, ValueError, r"\(0, 1\]"),
        (0, ValueError, "between 1 and 21"),
        (22, ValueError, "between 1 and 21"),
        (True, TypeError, "fraction"),
        ("half", TypeError, "fraction"),
    ],
)
def test_subsample_out_of_range(release, subsample, error, match):
    with pytest.raises(error, match=match):
        baron_pancreas("human", data_dir=release, subsample=subsample)


def test_shared_human_subset_is_the_seeded_quarter(data_dir):
    """The shared baron_human_subset.h5ad is subsample=0.25, random_state=0 of the release."""
    stored = _baron._load_local("human", [data_dir])
    if stored is None or stored.n_obs != 2142:
        pytest.skip("the shared folder does not hold the 2,142-cell human subset")
    drawn = baron_pancreas("human", data_dir=data_dir, subsample=0.25, random_state=0)
    assert list(drawn.obs_names) == list(stored.obs_names)
    assert drawn.obs["batch"].value_counts().to_dict() == {
        "human3": 914,
        "human1": 472,
        "human2": 450,
        "human4": 306,
    }
    with pytest.raises(ValueError, match="not the draw"):
        baron_pancreas("human", data_dir=data_dir, subsample=0.25, random_state=1)
    assert isinstance(drawn, ad.AnnData)
