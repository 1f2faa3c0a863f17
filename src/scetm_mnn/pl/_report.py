"""The run report: one self-contained HTML page that says whether the integration worked.

Figures are drawn with the other ``pl`` functions and embedded as base64 PNG ``data:``
URIs; the page has inline CSS, no script and no reference to any other file or address, so
it opens offline and can be mailed. It is rendered from the jinja2 template
``templates/report.html.j2``.
"""

from __future__ import annotations

import base64
import io
import logging
import os
import platform
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from functools import partial
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import anndata as ad
import jinja2
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import scanpy as sc
from matplotlib.figure import Figure

from .. import tl
from .._costs import COST_COLUMNS, peak_rss_mib
from .._validation import check_obs_key
from ..tl._leiden import sweep_subsample
from ..tl._utils import get_rep, leiden_labels, neighbors_copy
from ._sweep import leiden_sweep
from ._topics import topic_heatmap
from ._umap import integration_umap

logger = logging.getLogger(__name__)

#: Above this many cells the figures and the batch entropy use a stratified subsample.
REPORT_MAX_CELLS = 50_000
#: Resolution of the Leiden clusters shown in the UMAPs (and grouping the topics without
#: labels).
CLUSTER_RESOLUTION = 0.5
#: Packages whose versions the page lists.
_VERSIONS = ("scetm-mnn", "scvi-tools", "scanpy", "anndata", "torch", "numpy", "jinja2")
_DPI = 90
_UNCORRECTED = "X_pca_uncorrected"


def _png(fig: Figure) -> str:
    """The figure as a ``data:image/png;base64,...`` URI; the figure is closed."""
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=_DPI, bbox_inches="tight")
    finally:
        plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _figure(name: str, draw: Callable[[], Figure], errors: dict[str, str]) -> str | None:
    """Draw one figure; a failure is logged and noted on the page instead of raised."""
    try:
        return _png(draw())
    except Exception as err:  # a figure that cannot be drawn must not lose the page
        logger.warning("Report: the %s figure could not be drawn: %s", name, err, exc_info=True)
        errors[name] = f"{type(err).__name__}: {err}"
        return None


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


def _subsample(
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


def _entropy(sub: ad.AnnData, rep: str, batch_key: str) -> float | None:
    try:
        return tl.batch_entropy(sub, rep, batch_key, n_neighbors=min(30, sub.n_obs - 1))
    except ValueError as err:  # one batch
        logger.warning("Report: no batch entropy of %s: %s", rep, err)
        return None


def _umap_figure(
    sub: ad.AnnData,
    rep: str,
    batch_key: str,
    label_key: str | None,
    title: str,
    random_state: int,
    clusters: dict[str, pd.Series],
) -> Figure:
    """The UMAP triptych of ``rep`` on the drawn cells; its clusters go to ``clusters[rep]``."""
    keys = [batch_key] if label_key is None else [batch_key, label_key]
    tmp = neighbors_copy(sub, rep, {k: k for k in keys}, random_state=random_state)
    sc.tl.umap(tmp, random_state=random_state)
    leiden_labels(tmp, CLUSTER_RESOLUTION, random_state)
    clusters[rep] = tmp.obs["_leiden"]
    return integration_umap(
        tmp,
        rep,
        batch_key,
        label_key,
        cluster_key="_leiden",
        umap_key="X_umap",
        title=title[0].upper() + title[1:],
        max_cells=None,  # ``sub`` is the report's own subsample, which the page names
        show=False,
    )


#: The topic model's curves: (panel title, ((history key, label), ...)).
_CURVES = (
    ("Topic model: training loss", (("train_loss", "train"), ("validation_loss", "validation"))),
    ("Topic model: ELBO", (("elbo_train", "train"), ("elbo_validation", "validation"))),
)


def _curve(ax, frame: pd.DataFrame | None, label: str) -> bool:
    """Plot one ``model.history`` entry against the epoch; whether it had values."""
    if frame is None or frame.dropna().empty:
        return False
    series = frame.iloc[:, 0].dropna()
    ax.plot(series.index.to_numpy() + 1, series.to_numpy(), marker=".", label=label)
    return True


def _loss_figure(model, corrector_history: list[float] | None) -> Figure:
    """The topic model's loss and ELBO per epoch (validation where logged), the corrector's."""
    history = getattr(model, "history", None) or {}
    if "elbo_train" not in history:
        raise ValueError("model.history holds no 'elbo_train'; was the model trained?")
    panels = len(_CURVES) + bool(corrector_history)
    fig, axes = plt.subplots(1, panels, figsize=(4.6 * panels, 3.3), layout="constrained")
    for ax, (title, curves) in zip(axes, _CURVES):
        for key, label in curves:
            _curve(ax, history.get(key), label)
        ax.set(xlabel="epoch", ylabel="lower is better", title=title)
        ax.legend(frameon=False, fontsize=8)
    if corrector_history:
        epochs = np.arange(1, len(corrector_history) + 1)
        axes[-1].plot(epochs, corrector_history, marker=".", color="tab:green")
        axes[-1].set(xlabel="epoch", ylabel="loss", title="MNN corrector")
    for ax in axes:
        ax.grid(alpha=0.3, linewidth=0.5)
    return fig


def _topic_figure(model, groups: ad.AnnData, group_key: str, theta_key: str) -> Figure:
    """The topic heatmap of the topics that are some group's most enriched one."""
    best = tl.topic_specificity(
        groups, group_key, theta_key=theta_key, topic_gene=model.get_topic_gene_matrix()
    )
    shown = list(dict.fromkeys(best["topic"]))
    return topic_heatmap(
        model,
        adata=groups,
        label_key=group_key,
        n_top=3,
        topics=shown,
        theta_key=theta_key,
        show=False,
    )


def _records(df: pd.DataFrame) -> list[dict[str, object]]:
    return df.to_dict(orient="records")


def report(
    adata: ad.AnnData,
    model,
    path: str | os.PathLike,
    *,
    batch_key: str,
    label_key: str | None = None,
    sweep: pd.DataFrame | None = None,
    use_rep: str = "X_scetm_mnn",
    theta_key: str = "X_topics",
    uncorrected_rep: str | None = None,
    corrector_key: str = "mnn_corrected",
    costs: pd.DataFrame | None = None,
    params: Mapping[str, object] | None = None,
    source: str | None = None,
    max_cells: int = REPORT_MAX_CELLS,
    random_state: int = 0,
    title: str | None = None,
) -> Path:
    """Write one self-contained HTML page that shows what a run did and found.

    The page has six sections: the run (input, cells × genes, batches and cell types with
    their sizes, parameters, package versions, seed); before / after (the UMAP triptych
    clusters | batch | cell type on the uncorrected PCA and on the model's latent, with the
    batch entropy of each, :func:`scetm_mnn.tl.batch_entropy`); the Leiden sweep (plot and
    table, best-ARI row marked); the topics (:func:`scetm_mnn.pl.topic_heatmap` by cell type,
    or by Leiden cluster without labels, and :func:`scetm_mnn.tl.topic_enrichment`: each
    topic's top genes, most enriched group and its in/out θ ratio); training (the ELBO per
    epoch from ``model.history``, validation too where logged, and the corrector's loss per
    epoch); and the cost per phase.

    Figures are base64 PNGs inside the page, so it opens offline and can be mailed; the
    page names no other file or network address. Above ``max_cells`` cells the figures and
    the batch entropy use a stratified subsample (:func:`scetm_mnn.tl.stratified_subsample`
    by batch × cell type), and the page says so; its size then no longer grows with the
    cells (a few MB). A figure that cannot be drawn is logged as a warning and its place on
    the page says why; the rest of the page is still written.

    Parameters
    ----------
    adata
        The run's cells: the latent in ``obsm[use_rep]``, θ in ``obsm[theta_key]``,
        log-normalised genes in ``X``; e.g. :class:`~scetm_mnn.model.BatchCorrectedSCETM`'s
        AnnData after the pipeline. Not modified.
    model
        The trained topic model (its ``history``, ``get_topic_gene_matrix`` and
        ``get_top_genes`` are used).
    path
        The HTML file to write (its folder is created).
    batch_key
        ``obs`` column with the batches.
    label_key
        ``obs`` column with cell types, or ``None``.
    sweep
        A :func:`scetm_mnn.tl.leiden_sweep` table of ``use_rep``; the section says when
        there is none.
    use_rep
        ``obsm`` key of the model's latent.
    theta_key
        ``obsm`` key of the topic proportions θ.
    uncorrected_rep
        ``obsm`` key of the uncorrected embedding to compare with; ``None`` computes a PCA
        (50 components) of ``X`` on the drawn cells.
    corrector_key
        ``uns`` key of :func:`scetm_mnn.pp.mnn_correct`'s record (its ``history`` is the
        corrector's loss per epoch and its ``params`` are listed); skipped when absent.
    costs
        Cost per phase: columns ``phase``, ``seconds``, ``peak_rss_mib`` (as
        ``PipelineResult.costs``). The report's own figures are added as a phase.
    params
        Parameters of the run to list.
    source
        What the run read (an input file, a data set's name).
    max_cells
        Cells above which figures use a stratified subsample of this many.
    random_state
        Seed of the subsample, the UMAPs and the Leiden clusters.
    title
        Page title; default ``"scetm-mnn report"`` and the source.

    Returns
    -------
    The path written.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import scetm_mnn as sm
    >>> adata = sm.datasets.simulate(n_cells=300, n_genes=200, n_batches=2, n_cell_types=3)
    >>> sm.pp.preprocess(adata, n_top_genes=200, batch_key="batch")
    >>> sm.model.BatchCorrectedSCETM.setup_anndata(adata, layer="counts", batch_key="batch")
    >>> model = sm.model.BatchCorrectedSCETM(adata, n_topics=6, n_emb=16)
    >>> model.train(max_epochs=3, enable_progress_bar=False)  # a few steps: a quick look
    >>> adata.obsm["X_scetm_mnn"] = model.get_latent_representation()
    >>> adata.obsm["X_topics"] = model.get_topic_proportions()
    >>> path = sm.pl.report(adata, model, "report.html", batch_key="batch", label_key="cell_type")
    >>> html = path.read_text()
    >>> html.startswith("<!DOCTYPE html>"), "data:image/png;base64," in html
    (True, True)
    """
    tic = time.perf_counter()
    check_obs_key(adata, batch_key, "batch_key")
    keys = [batch_key]
    if label_key is not None:
        check_obs_key(adata, label_key, "label_key")
        keys.append(label_key)
    for key, what in ((use_rep, "use_rep"), (theta_key, "theta_key")):
        if key not in adata.obsm:
            available = ", ".join(map(repr, adata.obsm.keys())) or "none"
            raise KeyError(f"{what}={key!r} is not in adata.obsm (available: {available}).")
    if max_cells < 2:
        raise ValueError(f"max_cells must be at least 2, not {max_cells}.")
    errors: dict[str, str] = {}
    figures: dict[str, str | None] = {}
    keep, sub = _subsample(adata, keys, use_rep, uncorrected_rep, max_cells, random_state)
    entropy: dict[str, float | None] = {}
    clusters: dict[str, pd.Series] = {}
    for name, rep, what in (("before", _UNCORRECTED, "uncorrected"), ("after", use_rep, use_rep)):
        entropy[name] = _entropy(sub, rep, batch_key)
        draw = partial(
            _umap_figure, sub, rep, batch_key, label_key, f"{name}: {what}", random_state, clusters
        )
        figures[f"umap_{name}"] = _figure(f"umap_{name}", draw, errors)
    after = clusters.get(use_rep)

    sweep_rows, best_resolution = None, None
    if sweep is not None:
        reference = None
        if label_key is not None:
            reference = tl.label_batch_ari(adata, label_key, batch_key)
        figures["sweep"] = _figure(
            "sweep",
            lambda: leiden_sweep(sweep, bari_reference=reference, show=False),
            errors,
        )
        summary = tl.sweep_summary(sweep)
        best_resolution = float(summary["best_resolution"])
        sweep_rows = _records(sweep)

    # Topics by cell type over all cells (a cheap average), or by the latent's clusters.
    if label_key is not None:
        group_key, group_what = label_key, f"cell type ({label_key})"
        groups = ad.AnnData(
            obs=adata.obs[[label_key]].copy(), obsm={theta_key: adata.obsm[theta_key]}
        )
    elif after is not None:
        group_key, group_what = (
            "leiden",
            f"Leiden cluster of the latent (resolution {CLUSTER_RESOLUTION})",
        )
        groups = ad.AnnData(
            obs=pd.DataFrame({"leiden": after.to_numpy()}, index=sub.obs_names),
            obsm={theta_key: np.asarray(adata.obsm[theta_key])[keep]},
        )
    else:
        groups = None
    topic_rows = None
    if groups is not None:
        figures["topics"] = _figure(
            "topics", partial(_topic_figure, model, groups, group_key, theta_key), errors
        )
        try:
            table = tl.topic_enrichment(
                groups,
                group_key,
                theta_key=theta_key,
                topic_gene=model.get_topic_gene_matrix(),
                n_top=8,
            )
            table = table.sort_values("ratio", ascending=False, kind="stable")
            topic_rows = _records(table.reset_index())
        except Exception as err:
            logger.warning("Report: no topic table: %s", err, exc_info=True)
            errors["topic_table"] = f"{type(err).__name__}: {err}"
    else:
        group_what = None
        errors["topics"] = "no labels and no clusters of the latent to group the cells by"

    corrector = adata.uns.get(corrector_key) if corrector_key is not None else None
    corrector = corrector if isinstance(corrector, Mapping) else None
    corrector_history = None
    if corrector is not None and corrector.get("history") is not None:
        corrector_history = [float(v) for v in np.asarray(corrector["history"]).ravel()]
    figures["training"] = _figure(
        "training", lambda: _loss_figure(model, corrector_history), errors
    )

    cost_rows = None
    if costs is not None:
        missing = [c for c in COST_COLUMNS if c not in costs.columns]
        if missing:
            raise KeyError(f"costs lacks the columns {missing}; expected {list(COST_COLUMNS)}.")
        own = {
            "phase": "report",
            "seconds": time.perf_counter() - tic,
            "peak_rss_mib": peak_rss_mib(),
        }
        cost_rows = _records(pd.concat([costs[list(COST_COLUMNS)], pd.DataFrame([own])]))

    corrector_params = dict(corrector.get("params", {})) if corrector is not None else {}
    context = {
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
        "corrector_params": corrector_params,
        "n_pairs": corrector.get("n_pairs") if corrector is not None else None,
        "versions": _versions(),
        "seed": random_state,
        "n_drawn": sub.n_obs,
        "subsampled": sub.n_obs < adata.n_obs,
        "max_cells": max_cells,
        "use_rep": use_rep,
        "uncorrected": uncorrected_rep
        or "PCA (up to 50 components) of X, the log-normalised genes",
        "entropy": entropy,
        "figures": figures,
        "errors": errors,
        "sweep": sweep_rows,
        "sweep_subsample": None if sweep is None else sweep_subsample(sweep),
        "best_resolution": best_resolution,
        "group_what": group_what,
        "topics": topic_rows,
        "topic_counts": {"exposed": len(model.topic_names), "total": model.module.n_topics},
        "corrector_epochs": len(corrector_history) if corrector_history else 0,
        "costs": cost_rows,
    }
    html, path = _environment().get_template("report.html.j2").render(**context), Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html, encoding="utf-8")
    logger.info("Wrote the report %s (%.1f MB)", path, path.stat().st_size / 1e6)
    return path


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("scetm_mnn.pl", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = _number
    return env


def _number(value, digits: int = 3) -> str:
    """A number for a table: integers as they are, floats to ``digits`` significant digits."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "–"
    if isinstance(value, bool | np.bool_):
        return str(value)
    if isinstance(value, int | np.integer):
        return f"{int(value):,}"
    if isinstance(value, float | np.floating):
        return f"{float(value):.{digits}g}" if abs(value) < 1e5 else f"{float(value):,.0f}"
    return str(value)
