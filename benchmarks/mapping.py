"""Reference mapping and label transfer: our query mapping against scVI + scArches and scANVI.

Splits (``SCETM_MNN_DATA``), each a reference trained once and a query mapped onto it:

- **(a) Baron human, leave one donor out**: the 2,142 cells of the README's table; the
  reference is 3 donors, the query the 4th, for each donor in turn;
- **(b) Baron mouse → Baron human**: the mouse cells renamed to human symbols over the 1:1
  orthologs (``datasets.to_orthologs``), both restricted to the cell types they share;
- **(c) Baron human → Baron mouse**: the reverse; both are restricted to the orthologs
  first, so that the reference's HVGs are genes the query has;
- **(d) a type the reference lacks**: the human reference without one of delta, gamma,
  ductal and endothelial in turn, the query the donor with most cells of it.

The reference's 2,000 batch-aware HVGs are chosen on the reference alone; the query is
aligned to them with ``BatchCorrectedSCETM.prepare_query_anndata`` (zeros for missing genes).

Methods:

- ``scetm_mnn (pipeline)``: the README's pipeline: ``pp.MNNCorrector`` fitted on the
  reference, ``BatchCorrectedSCETM`` on its corrected layer (defaults: the conformal
  encoder of the corrector's latent); the query through ``corrector.transform`` (the
  default ``"local"`` adapter), ``load_query_data`` and ``train()`` (200 steps of the new
  λ rows); map seconds include the transform.
- ``scetm_mnn (counts)``: ``BatchCorrectedSCETM`` in original mode (the counts, λ), the
  query through ``load_query_data`` and ``train()``; labels on δ and, as ``scetm_mnn θ``,
  on θ = softmax(δ) of the same models.
- ``symphony``: ``symphonypy`` 0.2.4: the reference scaled, its 50-component PCA,
  ``harmony_integrate`` by batch, then ``map_embedding`` of the query (Symphony's
  soft-cluster mixture-of-experts correction from the stored reference statistics).
- ``celltypist``: CellTypist 1.7.1's logistic classifier trained on the reference's
  log-expression (the 2,000 HVGs, SGD solver, 200 iterations); its probabilities give the
  labels and the uncertainty (1 − the highest).
- ``scvi_scarches``: ``SCVI`` with scvi-tools' scArches settings (``encode_covariates=True``,
  layer norm, no batch norm, dropout 0.2, 2 layers), batch size 128, trained for as many
  optimizer steps as our reference (about 2,000), then ``SCVI.load_query_data`` and 200
  query epochs with ``weight_decay=0``, as scvi-tools' scArches tutorial does.
- ``scanvi_scarches``: ``SCANVI.from_scvi_model`` of that reference (20 epochs), then
  ``SCANVI.load_query_data`` (100 query epochs); its own classifier's soft predictions give
  the labels and the uncertainty.
- ``pca (floor)``: the 50-component PCA of reference and query together, uncorrected.
- ``harmony (joint)``: Harmony on the PCA of reference and query together, by batch: not a
  mapping (the query is integrated with the reference), a reference point.

Columns. The embedding methods transfer labels with ``tl.transfer_labels`` (15
neighbours, ``batch_key`` the reference's batches: the documented rule, see the user
guide); the classifiers label with their own probabilities. ``accuracy`` and
``macro-F1`` label every query cell (``threshold=1``) and count the cells of types the
reference holds; ``unknown`` is the share of those that are ``"Unknown"`` (uncertainty
above 0.5), ``novel unknown`` the share of the cells of types the reference lacks;
``AUROC wrong`` is the AUROC of the uncertainty for the cells labelled wrong at
``threshold=1`` (the novel cells included). Batch entropy: ``tl.batch_entropy`` of the
joint embedding with two batches, reference and query (30 neighbours). Map seconds: from
the trained reference to the query's embedding or labels.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/mapping.py [--splits abcd] [--quick]``
"""

from __future__ import annotations

import argparse
import logging
import platform
import sys
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
from sklearn.metrics import f1_score, roc_auc_score

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
NOVEL_TYPES = ("delta", "gamma", "ductal", "endothelial")
CELLTYPIST_MAX_ITER = 200

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
    """HVGs of the reference; the query aligned to them, counts in layers too.

    The query is log-normalized over all its genes before it is restricted to the
    reference's, as ``pp.preprocess`` normalizes the reference (normalizing over the HVGs
    alone scales the query up, a shift that every mapping then has to undo).
    """
    reference = prepare(_counts_only(reference))
    counts = _counts_only(query)
    logged = counts.copy()
    sc.pp.normalize_total(logged, target_sum=1e4)
    sc.pp.log1p(logged)
    out = BatchCorrectedSCETM.prepare_query_anndata(counts, reference.var_names)
    out.layers["counts"] = out.X.copy()
    out.X = BatchCorrectedSCETM.prepare_query_anndata(logged, reference.var_names).X
    return reference, out


def _novel_splits(human: ad.AnnData) -> dict[str, tuple[ad.AnnData, ad.AnnData]]:
    """(d): each of ``NOVEL_TYPES`` removed from the reference; the donor with most of it."""
    out = {}
    for novel in NOVEL_TYPES:
        of_type = human.obs[LABEL_KEY].astype(str) == novel
        donor = human.obs.loc[of_type, BATCH_KEY].astype(str).value_counts().idxmax()
        is_query = (human.obs[BATCH_KEY].astype(str) == donor).to_numpy()
        reference = human[~is_query & ~of_type.to_numpy()]
        out[f"(d) no {novel}, query {donor}"] = _split(reference, human[is_query])
    return out


def splits(which: str, quick: bool = False) -> dict[str, tuple[ad.AnnData, ad.AnnData]]:
    """The splits whose letters are in ``which`` (``"abcd"``); ``quick``: one donor of (a)."""
    human = load_dataset("human")
    out = {}
    if "a" in which:
        donors = sorted(human.obs[BATCH_KEY].astype(str).unique())
        for donor in donors[:1] if quick else donors:
            is_query = (human.obs[BATCH_KEY].astype(str) == donor).to_numpy()
            out[f"(a) human, query {donor}"] = _split(human[~is_query], human[is_query])
    if "b" in which or "c" in which:
        mouse = to_orthologs(baron_pancreas("mouse"), "mouse", "human")
        types = set(mouse.obs[LABEL_KEY].astype(str)) & set(human.obs[LABEL_KEY].astype(str))
        in_mouse = mouse.obs[LABEL_KEY].astype(str).isin(sorted(types)).to_numpy()
        in_human = human.obs[LABEL_KEY].astype(str).isin(sorted(types)).to_numpy()
        genes = human.var_names.intersection(mouse.var_names)  # the 1:1 orthologs
        human_shared, mouse = human[:, genes], mouse[:, genes]
        if "b" in which:
            out["(b) mouse → human"] = _split(mouse[in_mouse], human_shared[in_human])
        if "c" in which:
            out["(c) human → mouse"] = _split(human_shared[in_human], mouse[in_mouse])
    if "d" in which:
        out.update(_novel_splits(human))
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
    soft = query_model.predict(soft=True)
    predicted = soft.columns.to_numpy()[soft.to_numpy().argmax(axis=1)]
    uncertainty = 1.0 - soft.to_numpy().max(axis=1)
    return z_ref, z_query, (predicted, uncertainty), time.perf_counter() - start


def harmony_joint(reference: ad.AnnData, query: ad.AnnData, cache: dict):
    joint = ad.concat([reference, query], label=SOURCE_KEY, keys=["reference", "query"])
    joint.obs[BATCH_KEY] = joint.obs[BATCH_KEY].astype(str)
    sc.pp.pca(joint, n_comps=50, random_state=SEED)
    z, seconds = harmony(joint, SEED)
    return z[: reference.n_obs], z[reference.n_obs :], None, seconds


def scetm_mnn_pipeline(reference: ad.AnnData, query: ad.AnnData, cache: dict):
    """The README's pipeline: the reference's corrector maps the query, then the model."""
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


def symphony(reference: ad.AnnData, query: ad.AnnData, cache: dict):
    """Symphony (``symphonypy``): a Harmony reference, ``map_embedding`` of the query."""
    import symphonypy as sp

    ref = reference.copy()
    sc.pp.scale(ref, max_value=10)  # symphonypy maps with the reference's gene means, sds
    sc.pp.pca(ref, n_comps=50, random_state=SEED)
    sp.pp.harmony_integrate(ref, key=BATCH_KEY, verbose=False, random_seed=SEED)

    def map_query() -> np.ndarray:
        mapped = query.copy()
        sp.tl.map_embedding(mapped, ref, key=BATCH_KEY)
        return mapped.obsm["X_pca_harmony"]

    z_query, seconds = timed(map_query)
    return ref.obsm["X_pca_harmony"], z_query, None, seconds


def celltypist(reference: ad.AnnData, query: ad.AnnData, cache: dict):
    """CellTypist: its logistic classifier trained on the reference's log-expression.

    With ``use_SGD=True``: celltypist 1.7.1's default solver passes ``multi_class`` to
    scikit-learn's ``LogisticRegression``, which scikit-learn 1.8 removed.
    """
    import celltypist as ct

    model = ct.train(
        reference, labels=LABEL_KEY, check_expression=False, n_jobs=1,
        max_iter=CELLTYPIST_MAX_ITER, use_SGD=True, feature_selection=False,
    )  # fmt: skip

    start = time.perf_counter()
    probabilities = ct.annotate(query, model=model, majority_voting=False).probability_matrix
    seconds = time.perf_counter() - start
    predicted = probabilities.columns.to_numpy()[probabilities.to_numpy().argmax(axis=1)]
    return None, None, (predicted, 1.0 - probabilities.to_numpy().max(axis=1)), seconds


def pca_floor(reference: ad.AnnData, query: ad.AnnData, cache: dict):
    """The floor: kNN on the PCA of reference and query together, uncorrected."""
    joint = ad.concat([reference, query])
    z, seconds = timed(lambda: sc.pp.pca(joint.X, n_comps=50, random_state=SEED))
    return z[: reference.n_obs], z[reference.n_obs :], None, seconds


METHODS: dict[str, Mapper] = {
    "scetm_mnn (pipeline)": scetm_mnn_pipeline,
    "scetm_mnn (counts)": scetm_mnn,
    "scetm_mnn θ": scetm_mnn_theta,
    "symphony": symphony,
    "celltypist": celltypist,
    "scvi_scarches": scvi_scarches,
    "scanvi_scarches": scanvi_scarches,
    "pca (floor)": pca_floor,
    "harmony (joint)": harmony_joint,
}


# ------------------------------------------------------------------ scoring
def score(reference, query, z_ref, z_query, predicted, seconds) -> dict[str, float]:
    """Labels at ``threshold=1`` and at the default rule, from an embedding or a classifier.

    ``predicted`` is None (labels by ``tl.transfer_labels`` on the embeddings, calibrated
    on the reference's batches) or ``(labels, uncertainty)`` from the method itself
    (``"Unknown"`` where the uncertainty is above 0.5, the same threshold).
    """
    truth = query.obs[LABEL_KEY].astype(str).to_numpy()
    known = np.isin(truth, reference.obs[LABEL_KEY].astype(str).unique())
    entropy = np.nan
    if predicted is None:
        ref = ad.AnnData(obs=reference.obs[[LABEL_KEY, BATCH_KEY]].copy(), obsm={"X_emb": z_ref})
        qry = ad.AnnData(obs=query.obs[[LABEL_KEY]].copy(), obsm={"X_emb": z_query})
        transfer_labels(ref, qry, LABEL_KEY, "X_emb", n_neighbors=N_NEIGHBORS, batch_key=BATCH_KEY)
        uncertainty = qry.obs[f"{LABEL_KEY}_uncertainty"].to_numpy()
        transfer_labels(
            ref, qry, LABEL_KEY, "X_emb", n_neighbors=N_NEIGHBORS, threshold=1.0,
            batch_key=BATCH_KEY,
        )  # fmt: skip
        labels = qry.obs[f"{LABEL_KEY}_predicted"].astype(str).to_numpy()
        joint = ad.AnnData(
            obs=pd.DataFrame(
                {SOURCE_KEY: ["reference"] * ref.n_obs + ["query"] * qry.n_obs},
                index=[f"c{i}" for i in range(ref.n_obs + qry.n_obs)],
            ),
            obsm={"X_emb": np.concatenate([z_ref, z_query]).astype(np.float32)},
        )
        entropy = batch_entropy(joint, "X_emb", SOURCE_KEY, n_neighbors=30)
    else:
        labels, uncertainty = (np.asarray(v) for v in predicted)
        labels = labels.astype(str)
    unknown = uncertainty > 0.5
    wrong = labels != truth
    names = sorted(set(truth[known]))
    return {
        "accuracy": float(np.mean(labels[known] == truth[known])),
        "macro-F1": float(f1_score(truth[known], labels[known], labels=names, average="macro")),
        "unknown": float(unknown[known].mean()),
        "novel unknown": float(unknown[~known].mean()) if (~known).any() else np.nan,
        "AUROC wrong": (
            float(roc_auc_score(wrong, uncertainty)) if 0 < wrong.sum() < wrong.size else np.nan
        ),
        "batch entropy": entropy,
        "map s": seconds,
    }


def run(which: str, quick: bool, log=print, methods=None) -> pd.DataFrame:
    rows = []
    for name, (reference, query) in splits(which, quick).items():
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
    """Means over the donors of (a) and over the removed types of (d), beside (b) and (c)."""
    parts = []
    for letter, name in (("(a)", "(a) human, mean of donors"), ("(b)", None), ("(c)", None),
                         ("(d)", "(d) novel type, mean of 4")):  # fmt: skip
        rows = table[table["split"].str.startswith(letter)]
        if name is not None and len(rows):
            rows = rows.groupby("method", sort=False).mean(numeric_only=True).reset_index()
            rows.insert(0, "split", name)
        parts.append(rows)
    return pd.concat(parts, ignore_index=True)


DIGITS = {
    "accuracy": 3,
    "macro-F1": 3,
    "unknown": 3,
    "novel unknown": 3,
    "AUROC wrong": 3,
    "batch entropy": 3,
    "map s": 1,
    "total s": 0,
}


def render(table: pd.DataFrame, command: str, seconds: float) -> str:
    """The markdown page: the command, the summary and every split."""
    fmt = lambda df: df.round(DIGITS).to_markdown(index=False)  # noqa: E731
    versions = ", ".join(
        f"{p} {version(p)}"
        for p in ("scetm-mnn", "scvi-tools", "torch", "harmonypy", "symphonypy", "celltypist")
    )
    return "\n".join(
        [
            "# Reference mapping and label transfer",
            "",
            f"Command: `OMP_NUM_THREADS=1 python benchmarks/mapping.py {command}`",
            f"({seconds:.0f} s in all). Machine: {platform.machine()}, 1 torch thread, a "
            f"2-core machine. Versions: {versions}; {N_TOP_GENES} HVGs of each reference.",
            "",
            "See the docstring of `benchmarks/mapping.py` for the methods and columns.",
            "",
            "## Summary: (a) averaged over the held-out donors, (d) over the removed types",
            "",
            fmt(summary(table)),
            "",
            "## Every split",
            "",
            fmt(table),
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results" / "mapping.md")
    parser.add_argument("--quick", action="store_true", help="one donor split only")
    parser.add_argument(
        "--splits", default="abcd", help="the splits to run, by letter (default: abcd)"
    )
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), help="a subset")
    parser.add_argument(
        "--combine",
        nargs="+",
        type=Path,
        help="render the tables (CSV) of earlier runs, e.g. two halves run side by side",
    )
    args = parser.parse_args()
    if args.combine:
        table = pd.concat([pd.read_csv(path) for path in args.combine], ignore_index=True)
        command = "--combine " + " ".join(path.name for path in args.combine)
        text = render(table, command, float(table["total s"].sum()))
    else:
        torch.set_num_threads(1)
        _quiet()
        start = time.perf_counter()
        table = run(args.splits, args.quick, methods=args.methods)
        table.to_csv(args.out.with_suffix(".csv"), index=False)
        command = " ".join(sys.argv[1:]).replace(str(args.out), "...")
        text = render(table, command, time.perf_counter() - start)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
