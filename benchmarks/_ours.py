"""scetm-mnn's own entries for the pancreas benchmark (same interface as ``_peers``).

- ``scetm_mnn_orig``: BatchCorrectedSCETM on counts with the batch bias λ (original scETM mode);
- ``scetm_mnn_orig_equal``: the same at scETM 0.5.0's work: its batch size (2000) and its
  number of epochs (``pancreas.py --scetm-epochs``), so both see the same cells;
- ``mnn_latent``: the corrector's own output in its PCA space (``obsm["X_mnn_corrected"]``:
  the uncorrected PCA coordinates plus the learned shift; ``pp.mnn_correct`` alone);
- ``mnn_pca``: a fresh PCA (50) of the corrected expression layer;
- ``scetm_mnn``: the README pipeline: corrector, then the topic model with its encoder on the
  corrector's latent (``corrected_input="latent"``), at its defaults (a conformal linear
  encoder, so the MNN term is off; unused and copied topics pruned);
- ``scetm_mnn_h128``: the defaults before: a hidden layer of 128 units beside the linear
  path, and the ``"local"`` MNN term at weight 1;
- ``scetm_mnn_noskip``: the same without the encoder's linear path from its input to δ;
- ``scetm_mnn_nomnn``: neither the MNN term (``mnn_weight=0``) nor the linear path (the
  defaults before);
- ``scetm_mnn_expr``: the same with the encoder on the corrected expression over all genes
  (``corrected_input="expression"``, the default before);
- ``scetm_mnn_euclid``: the same with the original Euclidean MNN term, weight 1 (the
  ablation that shows the topic collapse it caused);
- ``scetm_mnn_k100``, ``scetm_mnn_mnn3``, ``scetm_mnn_h8`` and ``scetm_mnn_lin``: the
  pipeline with 100 topics, with the MNN term at weight 3, with a hidden layer of 8 units
  instead of 128, or with a linear encoder that is not conformal (screens of other
  defaults); ``scetm_mnn_conf_h8``: the conformal path plus a hidden layer of 8 units.

The corrector runs once per data set and seed; its time is added to the methods that use
it. Every topic model leaves θ and its topic-gene matrix in :data:`_common.TOPICS`, and
its genes' relevance (what ``get_top_genes`` ranks by) in :data:`_common.RELEVANCE`.
"""

from __future__ import annotations

import time

import anndata as ad
import numpy as np
import scanpy as sc
from _common import RELEVANCE, TOPICS, timed
from _peers import SCETM_BATCH_SIZE, SCETM_EPOCHS

from scetm_mnn import pp
from scetm_mnn.model import BatchCorrectedSCETM

KEY = "mnn_corrected"


def _corrected(adata: ad.AnnData, seed: int) -> float:
    """Run the corrector once per data set and seed; return its seconds."""
    if KEY not in adata.layers or adata.uns.get("mnn_seed") != seed:
        start = time.perf_counter()
        pp.mnn_correct(adata, "batch", key_added=KEY, random_state=seed)
        adata.uns["mnn_seconds"] = time.perf_counter() - start
        adata.uns["mnn_seed"] = seed
    return adata.uns["mnn_seconds"]


def _topic_model(
    adata: ad.AnnData, seed: int, name: str, model_kwargs=None, train_kwargs=None, **setup
) -> np.ndarray:
    data = adata.copy()
    BatchCorrectedSCETM.setup_anndata(data, layer="counts", batch_key="batch", **setup)
    model = BatchCorrectedSCETM(data, **(model_kwargs or {}))
    model.train(seed=seed, enable_progress_bar=False, **(train_kwargs or {}))
    TOPICS[name] = (model.get_topic_proportions(), model.get_topic_gene_matrix())
    RELEVANCE[name] = model.get_topic_gene_relevance()  # genes ranked as get_top_genes does
    return model.get_latent_representation()


def scetm_mnn_orig(adata: ad.AnnData, seed: int = 0) -> tuple[np.ndarray, float]:
    """BatchCorrectedSCETM in original scETM mode (counts + λ, no corrector)."""
    return timed(lambda: _topic_model(adata, seed, "scetm_mnn_orig"))


def scetm_mnn_orig_equal(
    adata: ad.AnnData, seed: int = 0, n_epochs: int = SCETM_EPOCHS
) -> tuple[np.ndarray, float]:
    """Original mode at scETM 0.5.0's work: batch size 2000, ``n_epochs`` epochs.

    An epoch visits every cell once in both, so the two see the same cells: scETM 0.5.0
    in ``max(n / 2000, 1)`` steps of 2000 per epoch, ours in ``ceil(n / 2000)`` steps.
    """
    train = {"batch_size": SCETM_BATCH_SIZE, "max_epochs": n_epochs}
    return timed(lambda: _topic_model(adata, seed, "scetm_mnn_orig_equal", train_kwargs=train))


def mnn_latent(adata: ad.AnnData, seed: int = 0) -> tuple[np.ndarray, float]:
    """The corrector's latent: its PCA coordinates after the learned shift."""
    seconds = _corrected(adata, seed)
    return np.asarray(adata.obsm[f"X_{KEY}"]), seconds


def mnn_pca(adata: ad.AnnData, seed: int = 0) -> tuple[np.ndarray, float]:
    """PCA (50) of the corrector's output."""
    seconds = _corrected(adata, seed)
    emb, sec = timed(
        lambda: sc.pp.pca(adata.layers[KEY], n_comps=50, random_state=seed, return_info=False)
    )
    return emb, seconds + sec


def _pipeline(adata, seed, name, model_kwargs=None, train_kwargs=None, **setup):
    seconds = _corrected(adata, seed)
    emb, sec = timed(
        lambda: _topic_model(
            adata,
            seed,
            name,
            model_kwargs,
            train_kwargs,
            corrected_layer=KEY,
            mnn_pairs_key=f"{KEY}_pairs",
            **setup,
        )
    )
    return emb, seconds + sec


NO_SKIP = {"encoder_skip": False}
H128 = {"hidden_sizes": (128,)}
"""The encoder of the defaults before 2026-12-07 (and of the screens run on them)."""


def scetm_mnn(adata: ad.AnnData, seed: int = 0) -> tuple[np.ndarray, float]:
    """The README pipeline at its defaults."""
    return _pipeline(adata, seed, "scetm_mnn")


def scetm_mnn_h128(adata: ad.AnnData, seed: int = 0) -> tuple[np.ndarray, float]:
    """The defaults before: a hidden layer of 128 beside the linear path, the MNN term."""
    return _pipeline(adata, seed, "scetm_mnn_h128", model_kwargs=H128)


def scetm_mnn_noskip(adata: ad.AnnData, seed: int = 0) -> tuple[np.ndarray, float]:
    """The pipeline without the encoder's linear path from its input to δ."""
    return _pipeline(adata, seed, "scetm_mnn_noskip", model_kwargs=NO_SKIP)


def scetm_mnn_expr(adata: ad.AnnData, seed: int = 0) -> tuple[np.ndarray, float]:
    """The pipeline with the encoder on the corrected expression over all genes."""
    return _pipeline(adata, seed, "scetm_mnn_expr", corrected_input="expression")


def scetm_mnn_nomnn(adata: ad.AnnData, seed: int = 0) -> tuple[np.ndarray, float]:
    """The pipeline without the MNN term and the linear path (the defaults before)."""
    return _pipeline(
        adata, seed, "scetm_mnn_nomnn", model_kwargs=NO_SKIP, train_kwargs={"mnn_weight": 0.0}
    )


def scetm_mnn_euclid(adata: ad.AnnData, seed: int = 0) -> tuple[np.ndarray, float]:
    """The pipeline with the original Euclidean MNN term (collapses the topics)."""
    return _pipeline(
        adata,
        seed,
        "scetm_mnn_euclid",
        model_kwargs={"mnn_loss": "euclidean"},
        train_kwargs={"mnn_weight": 1.0},
    )


def scetm_mnn_k100(adata: ad.AnnData, seed: int = 0) -> tuple[np.ndarray, float]:
    """The defaults before (:data:`H128`) with 100 topics instead of 50."""
    return _pipeline(adata, seed, "scetm_mnn_k100", model_kwargs={**H128, "n_topics": 100})


def scetm_mnn_mnn3(adata: ad.AnnData, seed: int = 0) -> tuple[np.ndarray, float]:
    """The defaults before (:data:`H128`) with the MNN term at weight 3 instead of 1."""
    return _pipeline(
        adata, seed, "scetm_mnn_mnn3", model_kwargs=H128, train_kwargs={"mnn_weight": 3.0}
    )


def scetm_mnn_h8(adata: ad.AnnData, seed: int = 0) -> tuple[np.ndarray, float]:
    """The pipeline with an encoder hidden layer of 8 units instead of 128."""
    return _pipeline(adata, seed, "scetm_mnn_h8", model_kwargs={"hidden_sizes": (8,)})


def scetm_mnn_lin(adata: ad.AnnData, seed: int = 0) -> tuple[np.ndarray, float]:
    """The pipeline with a linear encoder that is not conformal (any affine map to μ)."""
    kwargs = {"hidden_sizes": (), "conformal_encoder": False}
    return _pipeline(adata, seed, "scetm_mnn_lin", model_kwargs=kwargs)


def scetm_mnn_conf_h8(adata: ad.AnnData, seed: int = 0) -> tuple[np.ndarray, float]:
    """The conformal linear path plus a hidden layer of 8 units."""
    kwargs = {"hidden_sizes": (8,), "conformal_encoder": True}
    return _pipeline(adata, seed, "scetm_mnn_conf_h8", model_kwargs=kwargs)


OURS = {
    "scetm_mnn_orig": scetm_mnn_orig,
    "scetm_mnn_orig_equal": scetm_mnn_orig_equal,
    "mnn_latent": mnn_latent,
    "mnn_pca": mnn_pca,
    "scetm_mnn": scetm_mnn,
    "scetm_mnn_h128": scetm_mnn_h128,
    "scetm_mnn_expr": scetm_mnn_expr,
    "scetm_mnn_noskip": scetm_mnn_noskip,
    "scetm_mnn_nomnn": scetm_mnn_nomnn,
    "scetm_mnn_euclid": scetm_mnn_euclid,
    "scetm_mnn_k100": scetm_mnn_k100,
    "scetm_mnn_mnn3": scetm_mnn_mnn3,
    "scetm_mnn_h8": scetm_mnn_h8,
    "scetm_mnn_lin": scetm_mnn_lin,
    "scetm_mnn_conf_h8": scetm_mnn_conf_h8,
}
