"""``datasets.simulate``: the default draw is pinned; unbalanced and batch-specific types."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from scetm_mnn.datasets import simulate


def test_default_call_is_pinned():
    """A fingerprint of ``simulate()`` computed from the code before ``type_proportions`` and
    ``batch_specific_types`` existed: the defaults must keep drawing the same data."""
    adata = simulate()
    x = adata.X
    assert float(x.sum()) == 3364747.0
    assert x.nnz == 900367
    assert x[0].toarray()[0, :10].tolist() == [1, 0, 2, 0, 0, 5, 5, 1, 0, 0]
    assert x[1999].indices[:5].tolist() == [0, 2, 3, 4, 6]
    assert x[1999].data[:5].tolist() == [2, 6, 1, 1, 3]
    assert adata.obs["cell_type"].value_counts().sort_index().tolist() == [293, 420, 443, 481, 363]
    assert adata.obs["batch"].value_counts().sort_index().tolist() == [984, 1016]
    assert set(adata.uns["simulation"]) == {
        "n_batches", "n_cell_types", "batch_effect", "type_batch_effect", "random_state"
    }  # fmt: skip


def test_explicit_none_is_the_default():
    a = simulate(n_cells=300, n_genes=40, n_batches=3, random_state=4)
    b = simulate(
        n_cells=300,
        n_genes=40,
        n_batches=3,
        random_state=4,
        type_proportions=None,
        batch_specific_types=None,
    )
    assert (a.X != b.X).nnz == 0
    pd.testing.assert_frame_equal(a.obs, b.obs)


def test_type_proportions_unbalance_the_types():
    props = [0.5, 0.2, 0.15, 0.1, 0.05]
    adata = simulate(n_cells=4000, n_genes=50, n_batches=4, type_proportions=props)
    share = adata.obs["cell_type"].value_counts(normalize=True).sort_index().to_numpy()
    np.testing.assert_allclose(share, props, atol=0.05)
    assert (np.diff(share) < 0).all()
    # Unnormalised weights give the same data.
    same = simulate(n_cells=4000, n_genes=50, n_batches=4, type_proportions=[10, 4, 3, 2, 1])
    assert (same.X != adata.X).nnz == 0
    np.testing.assert_allclose(adata.uns["simulation"]["type_proportions"], props)


def test_batch_specific_types_stay_in_their_batches():
    adata = simulate(n_cells=1500, n_genes=60, n_batches=3, batch_specific_types={4: 0, 3: [1, 2]})
    default = simulate(n_cells=1500, n_genes=60, n_batches=3)
    table = pd.crosstab(adata.obs["batch"], adata.obs["cell_type"])
    assert table.loc[["batch_1", "batch_2"], "type_4"].eq(0).all()
    assert table.loc["batch_0", "type_4"] > 50
    assert (
        table.loc["batch_0", "type_3"] == 0
        and (table.loc[["batch_1", "batch_2"], "type_3"] > 50).all()
    )
    assert (table.drop(columns=["type_3", "type_4"]) > 20).all().all()
    # The batches keep their sizes: cells of a missing type go to the other types.
    assert adata.n_obs == 1500
    pd.testing.assert_series_equal(
        adata.obs["batch"].value_counts().sort_index(),
        default.obs["batch"].value_counts().sort_index(),
    )
    specific = adata.uns["simulation"]["batch_specific_types"]
    assert set(specific) == {"type_3", "type_4"}
    assert specific["type_4"].tolist() == [0] and specific["type_3"].tolist() == [1, 2]


def test_options_reach_the_h5ad(tmp_path):
    kwargs = dict(n_cells=200, n_genes=20, n_batches=2, type_proportions=[3, 1, 1, 1, 1])
    backed = simulate(**kwargs, batch_specific_types={0: 1}, filename=tmp_path / "s.h5ad")
    memory = simulate(**kwargs, batch_specific_types={0: 1})
    assert (backed.to_memory().X != memory.X).nnz == 0
    assert backed.uns["simulation"]["batch_specific_types"]["type_0"].tolist() == [1]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"type_proportions": [0.5, 0.5]}, ValueError, "2 values for n_cell_types=5"),
        ({"type_proportions": [1, 1, -1, 1, 1]}, ValueError, "finite and positive"),
        ({"type_proportions": [0, 0, 0, 0, 0]}, ValueError, "finite and positive"),
        ({"type_proportions": [1, 1, np.nan, 1, 1]}, ValueError, "finite and positive"),
        ({"batch_specific_types": {5: 0}}, ValueError, "type index 5; cell types are 0 to 4"),
        ({"batch_specific_types": {-1: 0}}, ValueError, "type index -1"),
        ({"batch_specific_types": {1: 3}}, ValueError, "batch 3; batches are 0 to 2"),
        ({"batch_specific_types": {1: []}}, ValueError, "no batch"),
        ({"batch_specific_types": [(1, 0)]}, TypeError, "must be a mapping"),
        (
            {"n_cell_types": 2, "batch_specific_types": {0: 0, 1: 1}},
            ValueError,
            r"batch\(es\) \[2\] with no cell type",
        ),
    ],
)
def test_bad_options_raise(kwargs, error, match):
    with pytest.raises(error, match=match):
        simulate(n_cells=100, n_genes=10, n_batches=3, **kwargs)
