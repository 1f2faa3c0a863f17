"""Reference mapping and label transfer: our query mapping against scVI + scArches and scANVI.

Splits (``SCETM_MNN_DATA``), each a reference trained once and a query mapped onto it:

- **(a) Baron human, leave one donor out**: the 2,142 cells of the README's table; the
  reference is 3 donors, the query the 4th, for each donor in turn;
- **(b) Baron mouse → Baron human**: the mouse cells renamed to human symbols over the 1:1
  orthologs (``datasets.to_orthologs``), both restricted to the cell types they share;
- **(c) Baron human → Baron mouse**: the reverse (``--reverse``; not in the committed run).

The reference's 2,000 batch-aware HVGs are chosen on the reference alone; the query is
aligned to them with ``BatchCorrectedSCETM.prepare_query_anndata`` (zeros for missing genes).

Methods:

- ``scetm_mnn``: ``BatchCorrectedSCETM`` in original mode (the counts, λ), defaults
  (about 2,000 steps); the query through ``load_query_data`` and ``train()`` (500 steps of
  the new λ rows, learning rate 5e-2). Its labels are transferred on δ
  (``get_latent_representation``, the embedding the package clusters on) and, as a second
  row ``scetm_mnn θ``, on the topic mixtures θ = softmax(δ) of the same models.
- ``scetm_mnn corrected``: the pipeline's corrected mode: ``pp.MNNCorrector`` fitted on
  the reference, the model's encoder on its corrected layer; the query through
  ``corrector.transform`` (the default ``"local"`` adapter) and then ``load_query_data``
  and ``train()`` as above; map seconds include the transform.
- ``scvi_scarches``: ``SCVI`` with scvi-tools' scArches settings (``encode_covariates=True``,
  layer norm, no batch norm, dropout 0.2, 2 layers), batch size 128, trained for as many
  optimizer steps as our reference (about 2,000: the same training budget; scVI's default
  400 epochs are 5,600 steps here and took over 7 minutes per reference on this shared
  machine), then ``SCVI.load_query_data`` and 200 query epochs with ``weight_decay=0``, as
  scvi-tools' scArches tutorial does.
- ``scanvi_scarches``: ``SCANVI.from_scvi_model`` of that reference (20 epochs), then
  ``SCANVI.load_query_data`` (100 query epochs); its own classifier predicts the labels.
- ``harmony (joint)``: Harmony on the PCA of reference and query together, by batch: not a
  mapping (the query is integrated with the reference), a reference point.

Every method but scANVI transfers labels with ``tl.transfer_labels`` (15 neighbours; the
accuracy and macro-F1 columns label every cell, ``threshold=1``; "unknown" is the share of
query cells above the default threshold 0.5). Batch entropy: ``tl.batch_entropy`` of the
joint embedding with two batches, reference and query (30 neighbours; 1 = perfectly mixed).
Map seconds: from the trained reference to the query's embedding (``load_query_data``,
query training, embedding); Harmony's whole run.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/mapping.py [--out ...] [--quick]``
"""

from __future__ import annotations

import argparse
import logging
import platform
import time
import warnings
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
import torch
from _common import BATCH_KEY, BENCH_DIR, LABEL_KEY, N_TOP_GENES, load_dataset, prepare, timed
from _peers import harmony
from sklearn.metrics import f1_score

from scetm_mnn.datasets import baron_pancreas, to_orthologs
from scetm_mnn.model import BatchCorrectedSCETM, default_max_epochs
from scetm_mnn.pp import MNNCorrector
from scetm_mnn.tl import batch_entropy, transfer_labels

SEED = 0
SOURCE_KEY = "source"
N_NEIGHBORS = 15
ARCHES = {
    "use_layer_norm": "both",
    "use_batch_norm": "none",
    "encode_covariates": True,
    "dropout_rate": 0.2,
    "n_layers": 2,
}
SCVI_BATCH_SIZE = 128
SCVI_QUERY_EPOCHS = 200
SCANVI_EPOCHS = 20
SCANVI_QUERY_EPOCHS = 100
UNLABELLED = "Unknown"

#: A mapper takes the prepared reference, the aligned query and a per-split cache (the scVI
#: reference, shared by scVI and scANVI), and returns the reference's and the query's
#: embeddings, the query's own predictions (or None) and the map seconds.
Mapper = Callable[
    [ad.AnnData, ad.AnnData], tuple[np.ndarray, np.ndarray, np.ndarray | None, float]
]


def _quiet() -> None:
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "scvi"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


# ------------------------------------------------------------------ splits
def _counts_only(adata: ad.AnnData) -> ad.AnnData:
    """Raw counts with the batch and label columns only."""
    return ad.AnnData(
        X=adata.X.copy(), obs=adata.obs[[BATCH_KEY, LABEL_KEY]].copy(), var=adata.var[[]].copy()
    )


def _split(reference: ad.AnnData, query: ad.AnnData) -> tuple[ad.AnnData, ad.AnnData]:
    """HVGs of the reference; the query aligned to them, counts in layers too."""
    reference = prepare(_counts_only(reference))
    query = BatchCorrectedSCETM.prepare_query_anndata(_counts_only(query), reference.var_names)
    query.layers["counts"] = query.X.copy()
    sc.pp.normalize_total(query, target_sum=1e4)
    sc.pp.log1p(query)
    return reference, query


def splits(quick: bool, reverse: bool = False) -> dict[str, tuple[ad.AnnData, ad.AnnData]]:
    human = load_dataset("human")
    out = {}
    donors = sorted(human.obs[BATCH_KEY].astype(str).unique())
    for donor in donors[:1] if quick else donors:
        is_query = (human.obs[BATCH_KEY].astype(str) == donor).to_numpy()
        out[f"(a) human, query {donor}"] = _split(human[~is_query], human[is_query])
    if quick:
        return out
    mouse = to_orthologs(baron_pancreas("mouse"), "mouse", "human")
    shared = sorted(set(mouse.obs[LABEL_KEY].astype(str)) & set(human.obs[LABEL_KEY].astype(str)))
    in_mouse = mouse.obs[LABEL_KEY].astype(str).isin(shared).to_numpy()
    in_human = human.obs[LABEL_KEY].astype(str).isin(shared).to_numpy()
    out["(b) mouse → human"] = _split(mouse[in_mouse], human[in_human])
    if reverse:
        out["(c) human → mouse"] = _split(human[in_human], mouse[in_mouse])
    return out


# ------------------------------------------------------------------ methods
def scetm_mnn(reference: ad.AnnData, query: ad.AnnData, cache: dict):
    """The latent representation δ (``get_latent_representation``)."""
    if "scetm" not in cache:
        cache["scetm"] = _scetm_mnn(reference, query)
    return cache["scetm"]


def scetm_mnn_theta(reference: ad.AnnData, query: ad.AnnData, cache: dict):
    """The topic mixtures θ = softmax(δ) (``get_topic_proportions``) of the same models."""
    if "scetm" not in cache:
        cache["scetm"] = _scetm_mnn(reference, query)
    z_ref, z_query, _, seconds = cache["scetm"]
    return _softmax(z_ref), _softmax(z_query), None, seconds


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _scetm_mnn(reference: ad.AnnData, query: ad.AnnData):
    ref = reference.copy()
    BatchCorrectedSCETM.setup_anndata(ref, layer="counts", batch_key=BATCH_KEY)
    model = BatchCorrectedSCETM(ref)
    model.train(seed=SEED, enable_progress_bar=False)
    z_ref = model.get_latent_representation()

    def map_query() -> np.ndarray:
        query_model = BatchCorrectedSCETM.load_query_data(query.copy(), model)
        query_model.train(seed=SEED, enable_progress_bar=False)
        return query_model.get_latent_representation()

    z_query, seconds = timed(map_query)
    return z_ref, z_query, None, seconds


def _scvi_data(adata: ad.AnnData, labels: bool) -> ad.AnnData:
    obs = adata.obs[[BATCH_KEY]].copy()
    if labels:
        obs[LABEL_KEY] = adata.obs[LABEL_KEY].astype(str).to_numpy()
    return ad.AnnData(X=adata.layers["counts"].copy(), obs=obs, var=adata.var[[]].copy())


def _scvi_reference(reference: ad.AnnData):
    import scvi

    scvi.settings.seed = SEED
    data = _scvi_data(reference, labels=True)
    scvi.model.SCVI.setup_anndata(data, batch_key=BATCH_KEY, labels_key=LABEL_KEY)
    model = scvi.model.SCVI(data, **ARCHES)
    epochs = default_max_epochs(data.n_obs, SCVI_BATCH_SIZE)  # our reference's ~2,000 steps
    model.train(
        max_epochs=epochs, batch_size=SCVI_BATCH_SIZE, enable_progress_bar=False, accelerator="cpu"
    )
    return model


def _cached_scvi(reference: ad.AnnData, cache: dict):
    """The split's scVI reference, trained once for scVI and scANVI."""
    if "scvi" not in cache:
        cache["scvi"] = _scvi_reference(reference)
    return cache["scvi"]


def _scvi_query(model_cls, reference_model, query: ad.AnnData, epochs: int):
    """``model_cls.load_query_data`` on the unlabelled query, trained as scvi-tools' tutorial."""
    data = _scvi_data(query, labels=False)
    data.obs[LABEL_KEY] = UNLABELLED
    query_model = model_cls.load_query_data(data, reference_model)
    query_model.train(
        max_epochs=epochs,
        plan_kwargs={"weight_decay": 0.0},
        enable_progress_bar=False,
        accelerator="cpu",
    )
    return query_model


def scvi_scarches(reference: ad.AnnData, query: ad.AnnData, cache: dict):
    import scvi

    model = _cached_scvi(reference, cache)
    z_ref = model.get_latent_representation()
    z_query, seconds = timed(
        lambda: _scvi_query(
            scvi.model.SCVI, model, query, SCVI_QUERY_EPOCHS
        ).get_latent_representation()
    )
    return z_ref, z_query, None, seconds


def scanvi_scarches(reference: ad.AnnData, query: ad.AnnData, cache: dict):
    import scvi

    base = _cached_scvi(reference, cache)
    model = scvi.model.SCANVI.from_scvi_model(base, unlabeled_category=UNLABELLED)
    model.train(max_epochs=SCANVI_EPOCHS, enable_progress_bar=False, accelerator="cpu")
    z_ref = model.get_latent_representation()
    start = time.perf_counter()
    query_model = _scvi_query(scvi.model.SCANVI, model, query, SCANVI_QUERY_EPOCHS)
    z_query = query_model.get_latent_representation()
    predicted = np.asarray(query_model.predict())
    return z_ref, z_query, predicted, time.perf_counter() - start


def harmony_joint(reference: ad.AnnData, query: ad.AnnData, cache: dict):
    joint = ad.concat([reference, query], label=SOURCE_KEY, keys=["reference", "query"])
    joint.obs[BATCH_KEY] = joint.obs[BATCH_KEY].astype(str)
    sc.pp.pca(joint, n_comps=50, random_state=SEED)
    z, seconds = harmony(joint, SEED)
    return z[: reference.n_obs], z[reference.n_obs :], None, seconds


def scetm_mnn_corrected(reference: ad.AnnData, query: ad.AnnData, cache: dict):
    """Corrected mode: the reference's corrector maps the query before the model does."""
    ref = reference.copy()
    corrector = MNNCorrector(BATCH_KEY, random_state=SEED)
    corrector.fit_transform(ref)
    BatchCorrectedSCETM.setup_anndata(
        ref, layer="counts", batch_key=BATCH_KEY, corrected_layer="mnn_corrected"
    )
    model = BatchCorrectedSCETM(ref)
    model.train(seed=SEED, enable_progress_bar=False)
    z_ref = model.get_latent_representation()

    def map_query() -> np.ndarray:
        mapped = query.copy()
        corrector.transform(mapped)
        query_model = BatchCorrectedSCETM.load_query_data(mapped, model)
        query_model.train(seed=SEED, enable_progress_bar=False)
        return query_model.get_latent_representation()

    z_query, seconds = timed(map_query)
    return z_ref, z_query, None, seconds


METHODS: dict[str, Mapper] = {
    "scetm_mnn": scetm_mnn,
    "scetm_mnn θ": scetm_mnn_theta,
    "scetm_mnn corrected": scetm_mnn_corrected,
    "scvi_scarches": scvi_scarches,
    "scanvi_scarches": scanvi_scarches,
    "harmony (joint)": harmony_joint,
}


# ------------------------------------------------------------------ scoring
def score(reference, query, z_ref, z_query, predicted, seconds) -> dict[str, float]:
    ref = ad.AnnData(obs=reference.obs[[LABEL_KEY]].copy(), obsm={"X_emb": z_ref})
    qry = ad.AnnData(obs=query.obs[[LABEL_KEY]].copy(), obsm={"X_emb": z_query})
    truth = qry.obs[LABEL_KEY].astype(str).to_numpy()
    unknown = np.nan
    if predicted is None:
        transfer_labels(ref, qry, LABEL_KEY, "X_emb", n_neighbors=N_NEIGHBORS)
        unknown = float((qry.obs[f"{LABEL_KEY}_predicted"] == "Unknown").mean())
        transfer_labels(ref, qry, LABEL_KEY, "X_emb", n_neighbors=N_NEIGHBORS, threshold=1.0)
        predicted = qry.obs[f"{LABEL_KEY}_predicted"].astype(str).to_numpy()
    labels = sorted(set(truth))
    joint = ad.AnnData(
        obs=pd.DataFrame(
            {SOURCE_KEY: ["reference"] * ref.n_obs + ["query"] * qry.n_obs},
            index=[f"c{i}" for i in range(ref.n_obs + qry.n_obs)],
        ),
        obsm={"X_emb": np.concatenate([z_ref, z_query]).astype(np.float32)},
    )
    return {
        "accuracy": float(np.mean(predicted == truth)),
        "macro-F1": float(f1_score(truth, predicted, labels=labels, average="macro")),
        "unknown": unknown,
        "batch entropy": batch_entropy(joint, "X_emb", SOURCE_KEY, n_neighbors=30),
        "map s": seconds,
    }


def run(quick: bool, reverse: bool, log=print, methods=None) -> pd.DataFrame:
    rows = []
    for name, (reference, query) in splits(quick, reverse).items():
        log(f"{name}: reference {reference.n_obs} cells, query {query.n_obs}")
        cache: dict = {}
        for method, fn in METHODS.items():
            if methods and method not in methods:
                continue
            start = time.perf_counter()
            z_ref, z_query, predicted, seconds = fn(reference, query, cache)
            row = {"split": name, "method": method, "query cells": query.n_obs}
            row.update(score(reference, query, z_ref, z_query, predicted, seconds))
            row["total s"] = time.perf_counter() - start  # 0 for rows served from the cache
            rows.append(row)
            log(
                f"  {method}: "
                + ", ".join(f"{k} {v:.3f}" for k, v in row.items() if k not in ("split", "method"))
            )
    return pd.DataFrame(rows)


def summary(table: pd.DataFrame) -> pd.DataFrame:
    """Mean of the leave-one-donor-out splits per method, next to the cross-species rows."""
    is_lodo = table["split"].str.startswith("(a)")
    mean = table[is_lodo].groupby("method", sort=False).mean(numeric_only=True).reset_index()
    mean.insert(0, "split", "(a) human, mean of donors")
    return pd.concat([mean, table[~is_lodo]], ignore_index=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results" / "mapping.md")
    parser.add_argument("--quick", action="store_true", help="one donor split only")
    parser.add_argument("--reverse", action="store_true", help="add (c) human → mouse")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), help="a subset")
    args = parser.parse_args()
    torch.set_num_threads(1)
    _quiet()
    start = time.perf_counter()
    table = run(args.quick, args.reverse, methods=args.methods)
    digits = {
        "accuracy": 3,
        "macro-F1": 3,
        "unknown": 3,
        "batch entropy": 3,
        "map s": 1,
        "total s": 0,
    }
    fmt = lambda df: df.round(digits).to_markdown(index=False)  # noqa: E731
    header = [
        "# Reference mapping and label transfer",
        "",
        "Command: `OMP_NUM_THREADS=1 python benchmarks/mapping.py"
        + (" --quick`" if args.quick else "`"),
        f"({time.perf_counter() - start:.0f} s in all). Machine: {platform.machine()}, 1 torch "
        "thread, a 2-core machine shared with other work. Versions: "
        + ", ".join(
            f"{p} {version(p)}" for p in ("scetm-mnn", "scvi-tools", "torch", "harmonypy")
        ),
        f"; {N_TOP_GENES} HVGs of each reference.",
        "",
        "See the docstring of `benchmarks/mapping.py` for the methods and columns.",
        "",
        "## Summary: (a) averaged over the held-out donors, then the cross-species splits",
        "",
        fmt(summary(table)),
        "",
        "## Every split",
        "",
        fmt(table),
        "",
    ]
    args.out.write_text("\n".join(header))
    print("\n".join(header))


if __name__ == "__main__":
    main()
