"""A cell type that only one batch has must not be merged into another by the correction.

Simulated: 3 batches, 5 types, ``type_4`` in ``batch_0`` only (about 6 % of the cells, 18 %
of batch 0's), a moderate batch effect that also differs between types. The corrector's
pairs are cross-batch, so any pair touching ``type_4`` joins it to another type: if many
did, the corrector would pull it onto that type. After ``pp.mnn_correct``, ``type_4`` must
keep its own neighbourhoods and its own Leiden cluster in the corrector's latent; after a
short training of the topic model on the corrector's output, in the model's latent too.

Measured with the defaults: no pair of about 10 000 touches ``type_4``; in the corrector's
latent its 15-NN purity is 1.0 and its best-ARI Leiden cluster is all of it and only it.
The bounds can fail: a forced pairing (300 neighbours, no offset rounds) touches
``type_4`` in more than its share of the pairs (checked below), and a corrector trained on
such pairs (``mnn_correct(n_neighbors=300, search_rounds=1)``, measured at 1,800 cells ×
600 genes) leaves ``type_4`` a purity of 0.73 in its latent.

The topic model keeps it with its default input, the corrector's latent
(``corrected_input="latent"``): measured on seeds 0, 1, 2 at 250 and 500 steps, purity
0.99-1.0 and its best-ARI cluster 0.99-1.0 of it and 1.0 pure. With the encoder on the
corrected expression over all genes (``corrected_input="expression"``, the default before)
it did not on seed 0: purity 0.78 at 250 steps and 0.39 at 500, its cluster only 23 % of
it (``type_4`` merged with ``type_1``); 0.97-1.0 on seeds 1 and 2.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scanpy as sc
from scipy import sparse

from scetm_mnn import pp, tl
from scetm_mnn.datasets import simulate
from scetm_mnn.model import BatchCorrectedSCETM
from scetm_mnn.tl._integration import _knn_batch_counts

pytestmark = pytest.mark.usefixtures("one_thread")

SPECIFIC, IN_BATCH = 4, 0
KEY = "mnn_corrected"
STEPS, BATCH = 250, 256
PURITY_NEIGHBOURS = 15
PURITY_FLOOR = 0.9
#: Most pairs that may touch the specific type, as a fraction of all pairs: a fifth of its
#: share of the cells (a corrector that paired cells regardless of type would give about
#: twice its share, as each pair has two ends).
PAIR_SHARE = 0.2


@pytest.fixture(scope="module")
def corrected():
    adata = simulate(
        n_cells=1500,
        n_genes=500,
        n_batches=3,
        n_cell_types=5,
        batch_effect=0.5,
        type_batch_effect=0.2,
        batch_specific_types={SPECIFIC: IN_BATCH},
        random_state=0,
    )
    data = pp.preprocess(adata, n_top_genes=500, batch_key="batch", copy=True)
    pp.mnn_correct(data, "batch", key_added=KEY, random_state=0)
    return data


@pytest.fixture(scope="module")
def model_latent(corrected):
    adata = corrected.copy()
    BatchCorrectedSCETM.setup_anndata(
        adata,
        layer="counts",
        batch_key="batch",
        corrected_layer=KEY,
        mnn_pairs_key=f"{KEY}_pairs",
    )
    model = BatchCorrectedSCETM(adata, n_topics=20, n_emb=32)
    epochs = int(np.ceil(STEPS / np.ceil(adata.n_obs / BATCH)))
    model.train(max_epochs=epochs, batch_size=BATCH, seed=0, enable_progress_bar=False)
    return model.get_latent_representation()


def _is_specific(adata) -> np.ndarray:
    return (adata.obs["cell_type"] == f"type_{SPECIFIC}").to_numpy()


def _touching(pairs: sparse.spmatrix, specific: np.ndarray) -> tuple[int, int]:
    """Pairs with at least one cell of the specific type, and all pairs (each once)."""
    upper = sparse.triu(pairs, k=1).tocoo()
    return int((specific[upper.row] | specific[upper.col]).sum()), upper.nnz


def _purity(x: np.ndarray, adata) -> float:
    """Mean fraction of the specific type's cells' nearest neighbours of the same type."""
    codes = adata.obs["cell_type"].cat.codes.to_numpy()
    code = adata.obs["cell_type"].cat.categories.get_loc(f"type_{SPECIFIC}")
    counts = _knn_batch_counts(x, codes, PURITY_NEIGHBOURS)
    return float(counts[_is_specific(adata), code].mean() / PURITY_NEIGHBOURS)


def _own_cluster(x: np.ndarray, adata) -> tuple[float, float]:
    """At the best-ARI Leiden resolution: the share of the specific type's cells in its
    largest cluster, and the share of that cluster's cells that are of the type."""
    tmp = sc.AnnData(obs=adata.obs[["batch", "cell_type"]].copy(), obsm={"X_latent": x})
    tl.leiden_sweep(
        tmp, "X_latent", "cell_type", "batch", RESOLUTIONS, key_added="best", random_state=0
    )
    specific = _is_specific(tmp)
    clusters = tmp.obs["best"].astype(str).to_numpy()
    largest = pd.Series(clusters[specific]).value_counts()
    main_cluster = largest.index[0]
    return largest.iloc[0] / specific.sum(), float(specific[clusters == main_cluster].mean())


def test_the_type_is_in_one_batch_only(corrected):
    table = pd.crosstab(corrected.obs["batch"], corrected.obs["cell_type"])
    assert table.loc[f"batch_{IN_BATCH}", f"type_{SPECIFIC}"] >= 50
    assert table[f"type_{SPECIFIC}"].drop(f"batch_{IN_BATCH}").eq(0).all()


def test_few_pairs_touch_the_batch_specific_type(corrected):
    specific = _is_specific(corrected)
    touching, n_pairs = _touching(corrected.obsp[f"{KEY}_pairs"], specific)
    assert n_pairs > 1000
    # Every such pair is a cross-type pair (the type has no partner in other batches).
    assert touching <= PAIR_SHARE * specific.mean() * n_pairs


def test_a_forced_pairing_breaks_the_pair_bound(corrected):
    """The negative control of the pair bound: 300 neighbours and no offset rounds pair
    ``type_4`` with whatever lies nearest in the other batches."""
    latent = sc.pp.pca(corrected.X, n_comps=30, random_state=0)
    pairs = pp.find_mnn_pairs(latent, corrected.obs["batch"], n_neighbors=300, n_rounds=1)
    specific = _is_specific(corrected)
    touching, n_pairs = _touching(pairs, specific)
    assert touching > PAIR_SHARE * specific.mean() * n_pairs


RESOLUTIONS = (0.05, 0.1, 0.2, 0.4)


def _assert_own_cluster(x: np.ndarray, adata) -> None:
    """The specific type keeps its neighbourhoods and its cluster, and the batches mix."""
    assert _purity(x, adata) >= PURITY_FLOOR
    in_main, main_purity = _own_cluster(x, adata)
    assert in_main >= PURITY_FLOOR
    assert main_purity >= PURITY_FLOOR
    # The correction is not a no-op that keeps the type apart by keeping batches apart
    # (the uncorrected PCA's batch entropy here is 0).
    tmp = sc.AnnData(obs=adata.obs[["batch"]].copy(), obsm={"X_latent": x})
    assert tl.batch_entropy(tmp[~_is_specific(adata)], "X_latent", "batch") >= 0.6


def test_the_corrector_keeps_the_batch_specific_type_apart(corrected):
    _assert_own_cluster(corrected.obsm[f"X_{KEY}"], corrected)


def test_the_model_keeps_the_batch_specific_type_apart(corrected, model_latent):
    _assert_own_cluster(model_latent, corrected)
