"""The report's figures: each drawn into a base64 PNG, a failure noted instead of raised.

:class:`Page` collects what :func:`scetm_mnn.pl.report`'s sections draw (``figures``) and
what they could not (``errors``, shown on the page in the figure's place).
"""

from __future__ import annotations

import base64
import io
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import scanpy as sc
from matplotlib.figure import Figure

from .. import tl
from ..tl._utils import leiden_labels, neighbors_copy
from ._topics import topic_heatmap
from ._umap import integration_umap

logger = logging.getLogger(__name__)

#: Resolution of the Leiden clusters shown in the UMAPs (and grouping the topics without
#: labels).
CLUSTER_RESOLUTION = 0.5
_DPI = 90


def _png(fig: Figure) -> str:
    """The figure as a ``data:image/png;base64,...`` URI; the figure is closed."""
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=_DPI, bbox_inches="tight")
    finally:
        plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


@dataclass
class Page:
    """The figures of one report (PNG URIs by name) and why any could not be drawn."""

    figures: dict[str, str | None] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    def figure(self, name: str, draw: Callable[[], Figure]) -> None:
        """Draw one figure; a failure is logged and noted on the page instead of raised."""
        try:
            self.figures[name] = _png(draw())
        except Exception as err:  # a figure that cannot be drawn must not lose the page
            logger.warning(
                "Report: the %s figure could not be drawn: %s", name, err, exc_info=True
            )
            self.note(name, err)
            self.figures[name] = None

    def note(self, name: str, err: Exception | str) -> None:
        """Say on the page why ``name`` is missing."""
        self.errors[name] = err if isinstance(err, str) else f"{type(err).__name__}: {err}"


def umap_figure(
    sub: ad.AnnData,
    rep: str,
    batch_key: str,
    label_key: str | None,
    title: str,
    random_state: int,
    clusters: dict[str, pd.Series],
    coords: np.ndarray | None = None,
) -> Figure:
    """The UMAP triptych of ``rep`` on the drawn cells; its clusters go to ``clusters[rep]``.

    ``coords``: a UMAP of the drawn cells computed before (the pipeline's), else one is
    computed here.
    """
    keys = [batch_key] if label_key is None else [batch_key, label_key]
    tmp = neighbors_copy(sub, rep, {k: k for k in keys}, random_state=random_state)
    if coords is None:
        sc.tl.umap(tmp, random_state=random_state)
    else:
        tmp.obsm["X_umap"] = coords
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


def loss_figure(model, corrector_history: list[float] | None) -> Figure:
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


def topic_figure(model, groups: ad.AnnData, group_key: str, theta_key: str, labels=None) -> Figure:
    """The topic heatmap of the topics that are some group's most enriched one.

    ``labels`` (topic → label) name the topics on its axis.
    """
    best = tl.topic_specificity(
        groups, group_key, theta_key=theta_key, topic_gene=model.get_topic_gene_relevance()
    )
    shown = list(dict.fromkeys(best["topic"]))
    return topic_heatmap(
        model,
        adata=groups,
        label_key=group_key,
        n_top=3,
        topics=shown,
        theta_key=theta_key,
        topic_labels=labels,
        show=False,
    )
