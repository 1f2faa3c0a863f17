"""The report's sections: each computes what its part of the page shows.

Every section returns its entries of the template's context and draws its figures into
the :class:`~._report_figures.Page`; :func:`scetm_mnn.pl.report` puts them together.
"""

from __future__ import annotations

import logging
import platform
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from functools import partial
from importlib.metadata import PackageNotFoundError, version

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc

from .. import tl
from .._costs import COST_COLUMNS, peak_rss_mib
from ..tl._annotate import TOPIC_ANNOTATION_KEY
from ..tl._leiden import sweep_subsample
from ..tl._stability import TOPIC_STABILITY_KEY
from ..tl._utils import get_rep
from ._report_figures import CLUSTER_RESOLUTION, Page, loss_figure, topic_figure, umap_figure
from ._sweep import leiden_sweep
from ._umap import umap_key

logger = logging.getLogger(__name__)

#: Packages whose versions the page lists.
_VERSIONS = ("scetm-mnn", "scvi-tools", "scanpy", "anndata", "torch", "numpy", "jinja2")
_UNCORRECTED = "X_pca_uncorrected"


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _VERSIONS:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _counts(values: pd.Series) -> list[tuple[str, int]]:
    counts = values.astype(str).value_counts(sort=True)
    return [(str(k), int(v)) for k, v in counts.items()]


def _records(df: pd.DataFrame) -> list[dict[str, object]]:
    return df.to_dict(orient="records")


def corrector_record(adata: ad.AnnData, corrector_key: str | None) -> Mapping | None:
    """:func:`scetm_mnn.pp.mnn_correct`'s record in ``uns``, or ``None``."""
    corrector = adata.uns.get(corrector_key) if corrector_key is not None else None
    return corrector if isinstance(corrector, Mapping) else None


def data_section(
    adata: ad.AnnData,
    batch_key: str,
    label_key: str | None,
    corrector: Mapping | None,
    params: Mapping[str, object] | None,
    source: str | None,
    title: str | None,
    random_state: int,
) -> dict[str, object]:
    """The run: its input, cells × genes, batches and cell types, parameters, versions."""
    return {
        "title": title or ("scetm-mnn report" + (f": {source}" if source else "")),
        "created": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "source": source,
        "n_obs": adata.n_obs,
        "n_vars": adata.n_vars,
        "batch_key": batch_key,
        "label_key": label_key,
        "batches": _counts(adata.obs[batch_key]),
        "labels": _counts(adata.obs[label_key]) if label_key is not None else None,
        "params": {str(k): v for k, v in (params or {}).items()},
        "corrector_params": dict(corrector.get("params", {})) if corrector is not None else {},
        "n_pairs": corrector.get("n_pairs") if corrector is not None else None,
        "versions": _versions(),
        "seed": random_state,
    }


def drawn_cells(
    adata: ad.AnnData,
    keys: list[str],
    use_rep: str,
    uncorrected_rep: str | None,
    max_cells: int,
    random_state: int,
) -> tuple[np.ndarray, ad.AnnData]:
    """The drawn cells (a stratified subsample): positions, embeddings and ``obs[keys]``.

    Without ``uncorrected_rep``, the uncorrected embedding is a PCA of ``adata.X`` (the
    log-normalised genes) on these cells.
    """
    keep = tl.stratified_subsample(adata, keys, max_cells, random_state=random_state)
    obsm = {use_rep: get_rep(adata, use_rep)[keep]}
    if uncorrected_rep is not None:
        obsm[_UNCORRECTED] = get_rep(adata, uncorrected_rep)[keep]
    else:
        x = adata.X[keep]
        x = x.toarray() if hasattr(x, "toarray") else np.asarray(x)
        n_comps = max(1, min(50, x.shape[0] - 1, x.shape[1] - 1))
        obsm[_UNCORRECTED] = sc.pp.pca(x.astype(np.float32), n_comps, random_state=random_state)
    obs = adata.obs.iloc[keep][list(dict.fromkeys(keys))].copy()
    return keep, ad.AnnData(obs=obs, obsm=obsm)


def stored_umap(adata: ad.AnnData, use_rep: str, keep: np.ndarray) -> np.ndarray | None:
    """The UMAP of ``use_rep`` kept in ``obsm[use_rep + "_umap"]`` at the drawn cells.

    ``None`` when there is none or it leaves out (``NaN``) a drawn cell.
    """
    coords = adata.obsm.get(umap_key(use_rep))
    if coords is None:
        return None
    coords = np.asarray(coords)[keep]
    return coords if np.isfinite(coords).all() else None


def _entropy(sub: ad.AnnData, rep: str, batch_key: str) -> float | None:
    try:
        return tl.batch_entropy(sub, rep, batch_key, n_neighbors=min(30, sub.n_obs - 1))
    except ValueError as err:  # one batch
        logger.warning("Report: no batch entropy of %s: %s", rep, err)
        return None


def integration_section(
    adata: ad.AnnData,
    drawn: tuple[np.ndarray, ad.AnnData],
    page: Page,
    *,
    batch_key: str,
    label_key: str | None,
    use_rep: str,
    uncorrected_rep: str | None,
    max_cells: int,
    random_state: int,
) -> tuple[dict[str, object], pd.Series | None]:
    """Before / after: the UMAPs and batch entropy of both; the latent's clusters too."""
    keep, sub = drawn
    entropy: dict[str, float | None] = {}
    clusters: dict[str, pd.Series] = {}
    for name, rep, what in (("before", _UNCORRECTED, "uncorrected"), ("after", use_rep, use_rep)):
        entropy[name] = _entropy(sub, rep, batch_key)
        coords = stored_umap(adata, use_rep, keep) if rep == use_rep else None
        title = f"{name}: {what}"
        draw = partial(
            umap_figure, sub, rep, batch_key, label_key, title, random_state, clusters, coords
        )
        page.figure(f"umap_{name}", draw)
    context = {
        "n_drawn": sub.n_obs,
        "subsampled": sub.n_obs < adata.n_obs,
        "max_cells": max_cells,
        "use_rep": use_rep,
        "uncorrected": uncorrected_rep
        or "PCA (up to 50 components) of X, the log-normalised genes",
        "entropy": entropy,
    }
    return context, clusters.get(use_rep)


def sweep_section(
    adata: ad.AnnData,
    sweep: pd.DataFrame | None,
    page: Page,
    *,
    batch_key: str,
    label_key: str | None,
) -> dict[str, object]:
    """The Leiden sweep: its plot and table, the best-ARI resolution."""
    if sweep is None:
        return {"sweep": None, "sweep_subsample": None, "best_resolution": None}
    reference = None
    if label_key is not None:
        reference = tl.label_batch_ari(adata, label_key, batch_key)
    page.figure("sweep", lambda: leiden_sweep(sweep, bari_reference=reference, show=False))
    summary = tl.sweep_summary(sweep)
    return {
        "sweep": _records(sweep),
        "sweep_subsample": sweep_subsample(sweep),
        "best_resolution": float(summary["best_resolution"]),
    }


def _topic_groups(
    adata: ad.AnnData,
    drawn: tuple[np.ndarray, ad.AnnData],
    label_key: str | None,
    theta_key: str,
    clusters: pd.Series | None,
) -> tuple[ad.AnnData, str, str] | None:
    """θ of the cells grouped by cell type (all cells), else by the latent's clusters."""
    if label_key is not None:
        groups = ad.AnnData(
            obs=adata.obs[[label_key]].copy(), obsm={theta_key: adata.obsm[theta_key]}
        )
        return groups, label_key, f"cell type ({label_key})"
    if clusters is None:
        return None
    keep, sub = drawn
    groups = ad.AnnData(
        obs=pd.DataFrame({"leiden": clusters.to_numpy()}, index=sub.obs_names),
        obsm={theta_key: np.asarray(adata.obsm[theta_key])[keep]},
    )
    return groups, "leiden", f"Leiden cluster of the latent (resolution {CLUSTER_RESOLUTION})"


def _uns_record(adata: ad.AnnData, key: str) -> Mapping | None:
    record = adata.uns.get(key)
    return record if isinstance(record, Mapping) else None


def topic_extras(adata: ad.AnnData, table: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """The topic table with each topic's label and stability, where ``uns`` holds them.

    Labels come from :func:`scetm_mnn.tl.annotate_topics` (``uns["topic_annotation"]``),
    reproducibility and ``stable`` from :func:`scetm_mnn.tl.topic_stability`
    (``uns["topic_stability"]``); the context says which were found and how many exposed
    topics are unstable.
    """
    table = table.copy()
    annotation = _uns_record(adata, TOPIC_ANNOTATION_KEY)
    stability = _uns_record(adata, TOPIC_STABILITY_KEY)
    context: dict[str, object] = {"annotated": annotation is not None, "stability": None}
    if annotation is not None:
        labels = dict(annotation.get("labels", {}))
        table["name"] = [labels.get(t, t) for t in table["topic"]]
    if stability is not None:
        reproducibility = dict(stability.get("reproducibility", {}))
        stable = dict(stability.get("stable", {}))
        table["reproducibility"] = [reproducibility.get(t, np.nan) for t in table["topic"]]
        table["stable"] = [None if t not in stable else bool(stable[t]) for t in table["topic"]]
        context["stability"] = {
            "n_runs": stability.get("n_runs"),
            "min_cosine": stability.get("min_cosine"),
            "min_presence": stability.get("min_presence"),
            "n_unstable": int(sum(flag is False for flag in table["stable"])),
        }
    return table, context


def topics_section(
    adata: ad.AnnData,
    model,
    drawn: tuple[np.ndarray, ad.AnnData],
    page: Page,
    *,
    label_key: str | None,
    theta_key: str,
    clusters: pd.Series | None,
) -> dict[str, object]:
    """The topics: their heatmap by group, and each topic's most enriched group."""
    context = {
        "group_what": None,
        "topics": None,
        "topic_counts": {"exposed": len(model.topic_names), "total": model.module.n_topics},
    }
    grouped = _topic_groups(adata, drawn, label_key, theta_key, clusters)
    if grouped is None:
        page.note("topics", "no labels and no clusters of the latent to group the cells by")
        return context
    groups, group_key, context["group_what"] = grouped
    annotation = _uns_record(adata, TOPIC_ANNOTATION_KEY) or {}
    labels = annotation.get("labels")
    page.figure("topics", partial(topic_figure, model, groups, group_key, theta_key, labels))
    try:
        table = tl.topic_enrichment(
            groups,
            group_key,
            theta_key=theta_key,
            topic_gene=model.get_topic_gene_relevance(),  # genes ranked as get_top_genes
            n_top=8,
        )
        table = table.sort_values("ratio", ascending=False, kind="stable")
        table, extras = topic_extras(adata, table.reset_index())
        context.update(extras, topics=_records(table))
    except Exception as err:
        logger.warning("Report: no topic table: %s", err, exc_info=True)
        page.note("topic_table", err)
    return context


def training_section(model, corrector: Mapping | None, page: Page) -> dict[str, object]:
    """Training: the topic model's loss and ELBO per epoch, the corrector's loss."""
    history = None
    if corrector is not None and corrector.get("history") is not None:
        history = [float(v) for v in np.asarray(corrector["history"]).ravel()]
    page.figure("training", lambda: loss_figure(model, history))
    return {"corrector_epochs": len(history) if history else 0}


def check_costs(costs: pd.DataFrame | None) -> None:
    """``costs`` has the columns of ``PipelineResult.costs``."""
    if costs is None:
        return
    missing = [c for c in COST_COLUMNS if c not in costs.columns]
    if missing:
        raise KeyError(f"costs lacks the columns {missing}; expected {list(COST_COLUMNS)}.")


def cost_section(costs: pd.DataFrame | None, tic: float) -> dict[str, object]:
    """The cost per phase, the report's own (since ``tic``) added."""
    if costs is None:
        return {"costs": None}
    check_costs(costs)
    own = {"phase": "report", "seconds": time.perf_counter() - tic, "peak_rss_mib": peak_rss_mib()}
    return {"costs": _records(pd.concat([costs[list(COST_COLUMNS)], pd.DataFrame([own])]))}
