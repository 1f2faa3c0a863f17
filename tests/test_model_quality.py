"""Quality of the trained model on simulated data with known gene programmes.

Each simulated cell type up-regulates its own marker genes, so a topic model whose topics
mean something gives each type one topic whose top genes are those markers. The batch
effect is strong and differs between cell types, so the pipeline's integration can be
compared with the uncorrected data.
"""

from __future__ import annotations

import numpy as np
import pytest
import scanpy as sc

from scetm_mnn import pp, tl
from scetm_mnn.datasets import simulate
from scetm_mnn.model import BatchCorrectedSCETM

pytestmark = pytest.mark.usefixtures("one_thread")  # the same numbers in any test order

N_TOPICS = 20
STEPS = 600
BATCH = 256


@pytest.fixture(scope="module")
def corrected_sim():
    adata = simulate(
        n_cells=1500,
        n_genes=400,
        n_batches=3,
        n_cell_types=5,
        batch_effect=1.0,
        type_batch_effect=0.5,
        random_state=3,
    )
    data = pp.preprocess(adata, n_top_genes=400, batch_key="batch", copy=True)
    pp.mnn_correct(data, "batch", random_state=0)
    return data


def _train(data, corrected: bool, mnn: bool, seed: int = 0) -> BatchCorrectedSCETM:
    adata = data.copy()
    setup = {"corrected_layer": "mnn_corrected"} if corrected else {}
    BatchCorrectedSCETM.setup_anndata(
        adata, layer="counts", batch_key="batch", mnn_pairs_key="mnn_corrected_pairs", **setup
    )
    # "MNN off" is the old default: no MNN term and no linear path to δ (the benchmark's
    # scetm_mnn_nomnn); "MNN on" is today's default, with both.
    skip = None if mnn else False
    model = BatchCorrectedSCETM(adata, n_topics=N_TOPICS, n_emb=32, encoder_skip=skip)
    epochs = int(np.ceil(STEPS / np.ceil(adata.n_obs / BATCH)))
    model.train(
        max_epochs=epochs,
        batch_size=BATCH,
        mnn_weight=1.0 if mnn else 0.0,
        seed=seed,
        enable_progress_bar=False,
    )
    adata.obsm["X_topics"] = model.get_topic_proportions()
    adata.obsm["X_scetm"] = model.get_latent_representation()
    return model


def _markers(adata) -> dict[str, list[str]]:
    marker_of = adata.var["marker_of"].astype(str)
    return {t: list(marker_of.index[marker_of == t]) for t in marker_of.unique() if t}


def _best_ari(adata, key: str) -> float:
    sweep = tl.leiden_sweep(adata, key, "cell_type", "batch", resolutions=(0.05, 0.1, 0.2, 0.4))
    return float(sweep["ARI"].max())


@pytest.fixture(scope="module")
def models(corrected_sim):
    return {
        (corrected, mnn): _train(corrected_sim, corrected, mnn)
        for corrected in (False, True)
        for mnn in (False, True)
    }


@pytest.mark.parametrize("mnn", [False, True], ids=["mnn_off", "mnn_on"])
@pytest.mark.parametrize("corrected", [False, True], ids=["original", "corrected"])
def test_each_programme_is_recovered_by_one_topic(models, corrected, mnn):
    model = models[(corrected, mnn)]
    adata = model.adata
    table = tl.topic_specificity(
        adata, "cell_type", topic_gene=model.get_topic_gene_matrix(), markers=_markers(adata)
    )
    # Half of the enriched topic's top-10 genes are the type's simulated markers for the
    # typical type, and every type has a topic enriched at least 5-fold. The corrected
    # modes put at least 3 markers in the top 10 for every type. Original mode (no
    # corrector) is weaker for one type at a time: over seeds 0-2, the MNN term on and
    # off, one and two threads (60 type cases), its lowest counts were 1 (seed 0, MNN
    # term off, one thread: type_3, enriched 15.7-fold), 3 and 3; every other case had
    # at least 4. So in original mode one type may fall short of 3, never two.
    shown = table[["topic", "ratio", "n_markers_in_top"]]
    short = int((table["n_markers_in_top"] < 3).sum())
    assert table["n_markers_in_top"].median() >= 5, shown
    assert short <= (0 if corrected else 1), shown
    assert (table["ratio"] >= 5).all(), table[["topic", "ratio"]]


@pytest.mark.parametrize("mnn", [False, True], ids=["mnn_off", "default"])
def test_corrected_mode_keeps_peaked_topic_mixtures(models, mnn):
    theta = models[(True, mnn)].adata.obsm["X_topics"]
    # a collapsed topic space has max θ ≈ 1/K for every cell
    assert tl.mean_max_theta(theta) > 4 / N_TOPICS


def test_default_pipeline_beats_the_uncorrected_data(models, corrected_sim):
    from scetm_mnn.tl._integration import _batch_entropy, _knn_batch_counts

    adata = models[(True, True)].adata  # the pipeline's defaults (corrector, MNN term)
    adata.obsm["X_pca"] = sc.pp.pca(corrected_sim.X, n_comps=30, random_state=0)
    codes = adata.obs["batch"].cat.codes.to_numpy()
    entropy = {
        k: _batch_entropy(_knn_batch_counts(adata.obsm[k], codes, 30))
        for k in ("X_pca", "X_scetm")
    }
    ari = {k: _best_ari(adata, k) for k in ("X_pca", "X_scetm")}
    assert entropy["X_scetm"] >= entropy["X_pca"] + 0.3
    assert ari["X_scetm"] >= ari["X_pca"] + 0.3


def _knn_accuracy(x: np.ndarray, labels: np.ndarray) -> float:
    """5-fold cross-validated accuracy of a 15-nearest-neighbour cell-type classifier."""
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    return float(cross_val_score(KNeighborsClassifier(15), x, labels, cv=folds).mean())


def test_the_topic_model_keeps_what_the_corrector_gave(models):
    # The latent the pipeline clusters on must not lose the corrector's cell-type
    # neighbourhoods: its kNN accuracy is at most 0.01 below that of the latent it reads.
    adata = models[(True, True)].adata
    labels = adata.obs["cell_type"].to_numpy()
    ours = _knn_accuracy(adata.obsm["X_scetm"], labels)
    corrector = _knn_accuracy(np.asarray(adata.obsm["X_mnn_corrected"]), labels)
    assert ours >= corrector - 0.01, (ours, corrector)


@pytest.mark.parametrize("mnn", [False, True], ids=["mnn_off", "mnn_on"])
@pytest.mark.parametrize("corrected", [False, True], ids=["original", "corrected"])
def test_no_exposed_topic_is_unused_or_a_copy(models, corrected, mnn):
    _assert_live_and_distinct(models[(corrected, mnn)], N_TOPICS)


def _assert_live_and_distinct(model: BatchCorrectedSCETM, n_topics: int) -> None:
    theta = model.get_topic_proportions()
    beta = model.get_topic_gene_matrix()
    n = model.n_live_topics
    assert theta.shape[1] == beta.shape[0] == len(model.topic_names) == n
    assert 2 <= n <= n_topics
    np.testing.assert_allclose(theta.sum(axis=1), 1.0, rtol=1e-5)
    # dead: mean θ below a tenth of uniform over all K topics
    usage = model._full_topic_proportions(None, None).mean(axis=0)
    assert (usage[model.exposed_topics] >= 0.1 / n_topics).all()
    top = [set(genes) for _, genes in model.get_top_genes(20).items()]  # as the user sees them
    overlaps = [len(a & b) / 20 for i, a in enumerate(top) for b in top[i + 1 :]]
    assert max(overlaps, default=0.0) <= 0.8, max(overlaps)


@pytest.fixture(scope="module")
def conformal_model(corrected_sim):
    """The README pipeline at its defaults: K = 50 topics hold the 50-d latent."""
    adata = corrected_sim.copy()
    BatchCorrectedSCETM.setup_anndata(
        adata, layer="counts", batch_key="batch", corrected_layer="mnn_corrected",
        mnn_pairs_key="mnn_corrected_pairs",
    )  # fmt: skip
    model = BatchCorrectedSCETM(adata, n_emb=32)
    epochs = int(np.ceil(STEPS / np.ceil(adata.n_obs / BATCH)))
    model.train(max_epochs=epochs, batch_size=BATCH, seed=0, enable_progress_bar=False)
    adata.obsm["X_topics"] = model.get_topic_proportions()
    return model


def test_the_default_encoder_clusters_as_the_correctors_latent(conformal_model):
    from scipy.spatial.distance import pdist

    model = conformal_model
    assert model.module.keeps_latent_geometry
    latent = np.asarray(model.adata.obsm["X_mnn_corrected"])
    mu = model.get_latent_representation()
    ratio = pdist(mu[:300]) / pdist(latent[:300])
    assert ratio.std() / ratio.mean() < 1e-3  # every distance scaled alike: the same kNN
    labels = model.adata.obs["cell_type"].to_numpy()
    assert _knn_accuracy(mu, labels) == pytest.approx(_knn_accuracy(latent, labels), abs=1e-3)


def test_the_default_encoder_still_names_the_programmes(conformal_model):
    model = conformal_model
    adata = model.adata
    table = tl.topic_specificity(
        adata, "cell_type", topic_gene=model.get_topic_gene_matrix(), markers=_markers(adata)
    )
    shown = table[["topic", "ratio", "n_markers_in_top"]]
    assert table["n_markers_in_top"].median() >= 5, shown
    assert (table["n_markers_in_top"] >= 3).all(), shown
    assert (table["ratio"] >= 5).all(), shown
    assert tl.mean_max_theta(adata.obsm["X_topics"]) > 4 / 50
    _assert_live_and_distinct(model, 50)
