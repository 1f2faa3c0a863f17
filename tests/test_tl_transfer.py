"""tl.transfer_labels: the weighted kNN vote, its uncertainty and the "Unknown" label."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scanpy as sc
from anndata import AnnData

from scetm_mnn.datasets import simulate
from scetm_mnn.tl import transfer_labels

NOVEL = "type_4"


@pytest.fixture(scope="module")
def reference_query():
    """PCA of simulated data: reference batches 0-1 without type_4; query batch 2.

    The batches differ only in library size here: an embedding that keeps batch effects
    puts the whole query far from the reference, and every cell is "Unknown".
    """
    adata = simulate(
        n_cells=900, n_genes=200, n_batches=3, n_cell_types=5, batch_effect=0.0, random_state=0
    )
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    sc.pp.pca(adata, n_comps=15, random_state=0)
    in_query = (adata.obs["batch"] == "batch_2").to_numpy()
    novel = (adata.obs["cell_type"] == NOVEL).to_numpy()
    return adata[~in_query & ~novel].copy(), adata[in_query].copy()


def test_accuracy_and_unknown_for_an_absent_type(reference_query):
    reference, query = reference_query[0], reference_query[1].copy()
    obs_before = reference.obs.copy()
    transfer_labels(reference, query, "cell_type", "X_pca")
    predicted = query.obs["cell_type_predicted"].astype(str)
    truth = query.obs["cell_type"].astype(str)
    seen = (truth != NOVEL).to_numpy()
    assert (predicted == truth)[seen].mean() >= 0.9
    assert (predicted == "Unknown")[~seen].mean() >= 0.8
    uncertainty = query.obs["cell_type_uncertainty"]
    assert uncertainty.between(0, 1).all()
    assert uncertainty[~seen].mean() > uncertainty[seen].mean() + 0.3
    assert list(query.obs["cell_type_predicted"].cat.categories)[-1] == "Unknown"
    pd.testing.assert_frame_equal(reference.obs, obs_before)  # the reference is not changed


def test_threshold_one_labels_every_cell(reference_query):
    reference, query = reference_query[0], reference_query[1].copy()
    transfer_labels(reference, query, "cell_type", "X_pca", threshold=1.0)
    assert "Unknown" not in set(query.obs["cell_type_predicted"].astype(str))


def _toy(n_per_label: int = 20) -> tuple[AnnData, AnnData]:
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [10.0, 0.0]])
    x = np.concatenate([c + rng.normal(0, 0.5, (n_per_label, 2)) for c in centres])
    labels = np.repeat(["a", "b"], n_per_label)
    reference = AnnData(obs=pd.DataFrame({"label": labels}), obsm={"X_emb": x})
    reference.obs_names = [f"r{i}" for i in range(reference.n_obs)]
    points = np.array([[0.0, 0.0], [10.0, 0.0], [5.0, 0.0], [0.0, 40.0]])
    query = AnnData(obs=pd.DataFrame(index=[f"q{i}" for i in range(4)]), obsm={"X_emb": points})
    return reference, query


def test_uncertainty_of_inside_between_and_far_cells():
    reference, query = _toy()
    transfer_labels(reference, query, "label", "X_emb", n_neighbors=10)
    predicted = list(query.obs["label_predicted"].astype(str))
    uncertainty = query.obs["label_uncertainty"].to_numpy()
    assert predicted[:2] == ["a", "b"]
    assert uncertainty[0] < 0.05 and uncertainty[1] < 0.05
    assert predicted[2] == "Unknown" and predicted[3] == "Unknown"  # between, and far
    assert uncertainty[3] == pytest.approx(1.0)


def test_custom_unknown_label():
    reference, query = _toy()
    transfer_labels(reference, query, "label", "X_emb", unknown_label="novel")
    assert query.obs["label_predicted"].astype(str).iloc[3] == "novel"


def test_bad_input_is_named():
    reference, query = _toy()
    with pytest.raises(KeyError, match="label_key"):
        transfer_labels(reference, query, "missing", "X_emb")
    with pytest.raises(KeyError, match="use_rep='X_other'"):
        transfer_labels(reference, query, "label", "X_other")
    wide = query.copy()
    wide.obsm["X_emb"] = np.zeros((4, 3))
    with pytest.raises(ValueError, match="has 2 columns and the query's 3"):
        transfer_labels(reference, wide, "label", "X_emb")
    gaps = reference.copy()
    gaps.obs["label"] = gaps.obs["label"].astype(object)
    gaps.obs.iloc[0, 0] = np.nan
    with pytest.raises(ValueError, match="1 missing values"):
        transfer_labels(gaps, query, "label", "X_emb")
    with pytest.raises(ValueError, match="n_neighbors"):
        transfer_labels(reference, query, "label", "X_emb", n_neighbors=0)
    with pytest.raises(ValueError, match="threshold"):
        transfer_labels(reference, query, "label", "X_emb", threshold=1.5)


def test_batch_calibration_flags_the_absent_type_and_few_shared_cells(reference_query):
    """The documented rule (threshold 0.5, distance_quantile 0.95) with the batches."""
    from sklearn.metrics import roc_auc_score

    reference, query = reference_query[0], reference_query[1].copy()
    transfer_labels(reference, query, "cell_type", "X_pca", batch_key="batch")
    predicted = query.obs["cell_type_predicted"].astype(str).to_numpy()
    truth = query.obs["cell_type"].astype(str).to_numpy()
    novel = truth == NOVEL
    assert (predicted == "Unknown")[novel].mean() >= 0.7
    assert (predicted == "Unknown")[~novel].mean() <= 0.05
    wrong = predicted != truth  # the novel cells and any mislabelled seen cell
    assert roc_auc_score(wrong, query.obs["cell_type_uncertainty"]) >= 0.85


def test_calibration_to_other_batches_is_never_closer():
    from scetm_mnn.tl._transfer import calibration_distances, conformal_p_values

    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 5))
    batches = np.repeat(["a", "b"], 100)
    x[batches == "b"] += 0.5  # a batch shift
    own = calibration_distances(x, None, 10)
    cross = calibration_distances(x, batches, 10)
    assert own.shape == cross.shape == (200,)
    assert np.all(cross >= own - 1e-9) and cross.mean() > own.mean()
    # p: the share of the label's calibration cells at least as far; per label
    labels = np.repeat([0, 1], 100)
    p = conformal_p_values(np.array([0.0, 1e9, 0.0]), np.array([0, 0, 1]), cross, labels)
    np.testing.assert_allclose(p, [1.0, 0.0, 1.0])


def test_missing_batch_key_is_named(reference_query):
    reference, query = reference_query[0], reference_query[1].copy()
    with pytest.raises(KeyError, match="batch_key"):
        transfer_labels(reference, query, "cell_type", "X_pca", batch_key="donor")
