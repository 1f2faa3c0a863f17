"""The run report: one self-contained HTML page that says whether the integration worked.

Figures are drawn with the other ``pl`` functions and embedded as base64 PNG ``data:``
URIs; the page has inline CSS, no script and no reference to any other file or address, so
it opens offline and can be mailed. It is rendered from the jinja2 template
``templates/report.html.j2``; each section of the page is one function of
:mod:`._report_sections`, its figures drawn by :mod:`._report_figures`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path

import anndata as ad
import jinja2
import numpy as np
import pandas as pd

from .._atomic import write_text
from .._docstrings import shared_docstring
from .._validation import check_obs_key
from ._report_figures import Page
from ._report_sections import (
    check_costs,
    corrector_record,
    cost_section,
    data_section,
    drawn_cells,
    integration_section,
    sweep_section,
    topics_section,
    training_section,
)

logger = logging.getLogger(__name__)

#: Above this many cells the figures and the batch entropy use a stratified subsample.
REPORT_MAX_CELLS = 50_000


def _check_inputs(
    adata: ad.AnnData,
    batch_key: str,
    label_key: str | None,
    use_rep: str,
    theta_key: str,
    max_cells: int,
    costs: pd.DataFrame | None,
) -> list[str]:
    """The ``obs`` columns the report reads, once its inputs are checked."""
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
    check_costs(costs)
    return keys


@shared_docstring
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
    topic's top genes, most enriched group and its in/out θ ratio; with
    ``adata.uns["topic_annotation"]`` from :func:`scetm_mnn.tl.annotate_topics` also each
    topic's name, on the heatmap too, and with ``adata.uns["topic_stability"]`` from
    :func:`scetm_mnn.tl.topic_stability` its reproducibility, unstable topics marked);
    training (the ELBO per
    epoch from ``model.history``, validation too where logged, and the corrector's loss per
    epoch); and the cost per phase.

    Figures are base64 PNGs inside the page, so it opens offline and can be mailed; the
    page names no other file or network address. Above ``max_cells`` cells the figures and
    the batch entropy use a stratified subsample (:func:`scetm_mnn.tl.stratified_subsample`
    by batch × cell type), and the page says so; its size then no longer grows with the
    cells (a few MB). A figure that cannot be drawn is logged as a warning and its place on
    the page says why; the rest of the page is still written. A UMAP of ``use_rep`` that is
    already in ``obsm[use_rep + "_umap"]`` (the pipeline, ``scetm-mnn run``, keeps the one of
    its ``umap.png`` there) is reused where it covers every drawn cell, rather than computed
    again.

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
    %(simulated_model)s
    >>> model.train(max_epochs=3, enable_progress_bar=False)  # a few steps: a quick look
    >>> adata.obsm["X_scetm_mnn"] = model.get_latent_representation()
    >>> adata.obsm["X_topics"] = model.get_topic_proportions()
    >>> path = sm.pl.report(adata, model, "report.html", batch_key="batch", label_key="cell_type")
    >>> html = path.read_text()
    >>> html.startswith("<!DOCTYPE html>"), "data:image/png;base64," in html
    (True, True)
    """
    tic = time.perf_counter()
    keys = _check_inputs(adata, batch_key, label_key, use_rep, theta_key, max_cells, costs)
    page = Page()
    drawn = drawn_cells(adata, keys, use_rep, uncorrected_rep, max_cells, random_state)
    corrector = corrector_record(adata, corrector_key)
    integration, clusters = integration_section(
        adata,
        drawn,
        page,
        batch_key=batch_key,
        label_key=label_key,
        use_rep=use_rep,
        uncorrected_rep=uncorrected_rep,
        max_cells=max_cells,
        random_state=random_state,
    )
    context = {
        **data_section(
            adata, batch_key, label_key, corrector, params, source, title, random_state
        ),
        **integration,
        **sweep_section(adata, sweep, page, batch_key=batch_key, label_key=label_key),
        **topics_section(
            adata, model, drawn, page, label_key=label_key, theta_key=theta_key, clusters=clusters
        ),
        **training_section(model, corrector, page),
        **cost_section(costs, tic),
        "figures": page.figures,
        "errors": page.errors,
    }
    html, path = _environment().get_template("report.html.j2").render(**context), Path(path)
    write_text(path, html)  # atomically: a killed run leaves the old report or none
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
