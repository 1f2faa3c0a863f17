"""Helpers shared by the figures: colours, categorical scatters and saving."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import scanpy as sc
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from scanpy.plotting import palettes

from .._atomic import atomic_path

logger = logging.getLogger(__name__)


def category_colors(n: int) -> list[str]:
    """Return ``n`` distinct colours from scanpy's default palettes (20, 28 or 102)."""
    for palette in (palettes.default_20, palettes.default_28, palettes.default_102):
        if n <= len(palette):
            return list(palette[:n])
    return [palette[i % len(palette)] for i in range(n)]


def point_size(n_obs: int) -> float:
    """Return a marker area that keeps ``n_obs`` points readable (scanpy's rule, capped)."""
    return float(min(8.0, max(0.5, 12000.0 / max(n_obs, 1))))


def scatter_categorical(
    ax: Axes,
    xy: np.ndarray,
    values: pd.Series,
    title: str,
    random_state: int = 0,
) -> None:
    """Scatter ``xy`` coloured by a categorical, in a shuffled order, legend outside.

    The drawing order is a seeded permutation so no category hides the others.
    """
    values = values.astype(str).astype("category")
    categories = list(values.cat.categories)
    colors = np.asarray(category_colors(len(categories)), dtype=object)
    order = np.random.default_rng(random_state).permutation(len(values))
    codes = values.cat.codes.to_numpy()[order]
    ax.scatter(
        xy[order, 0],
        xy[order, 1],
        c=list(colors[codes]),
        s=point_size(len(values)),
        linewidths=0,
        rasterized=True,
    )
    for name, color in zip(categories, colors):
        ax.scatter([], [], c=color, s=20, label=name)
    ax.legend(
        loc="upper left",
        bbox_to_anchor=(1.0, 1.0),
        frameon=False,
        fontsize=7,
        ncol=max(1, math.ceil(len(categories) / 18)),
        handletextpad=0.2,
        columnspacing=0.6,
        borderaxespad=0.2,
    )
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("UMAP1", fontsize=8)
    ax.set_ylabel("UMAP2", fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def save_figure(fig: Figure, save: str | os.PathLike | None, dpi: int = 300) -> None:
    """Write ``fig`` to ``save`` (format from the suffix: .png, .pdf, .svg, ...) if given."""
    if save is None:
        return
    path = Path(save)
    if not path.suffix:  # as matplotlib names it
        path = path.with_suffix(f".{plt.rcParams['savefig.format']}")
    with atomic_path(path) as temporary:  # a killed run never leaves half a figure
        fig.savefig(temporary, dpi=dpi, bbox_inches="tight", format=path.suffix[1:])
    logger.info("Saved figure to %s", path)


def figure_and_axes(
    ax: Axes | Sequence[Axes] | None, n: int, figsize: tuple[float, float], **subplots_kw
) -> tuple[Figure, list[Axes]]:
    """A new figure with ``n`` axes in a row, or the figure of the ``n`` axes passed as ``ax``.

    Raises
    ------
    TypeError
        When ``ax`` is not one ``Axes`` (``n == 1``) or a sequence of ``n`` of them.
    """
    if ax is None:
        fig, axes = plt.subplots(1, n, figsize=figsize, layout="constrained", **subplots_kw)
        return fig, list(np.atleast_1d(axes))
    given = isinstance(ax, Sequence | np.ndarray)
    axes = [ax] if isinstance(ax, Axes) else list(np.ravel(ax)) if given else [None]
    if len(axes) != n or not all(isinstance(a, Axes) for a in axes):
        wanted = "one matplotlib Axes" if n == 1 else f"a sequence of {n} matplotlib Axes"
        raise TypeError(
            f"ax must be {wanted} for this figure, not {ax!r}; or leave it None for a new figure."
        )
    return axes[0].figure.figure, axes  # .figure.figure: the root figure of a subfigure too


def save_or_show(
    fig: Figure,
    ax: Axes | Sequence[Axes] | None,
    save: str | os.PathLike | None,
    show: bool | None,
) -> Figure | Axes | list[Axes] | None:
    """Finish a figure as scanpy does: save it, show it, or return it.

    ``show=None`` follows :attr:`scanpy.settings.autoshow`. A shown figure returns ``None``;
    otherwise the figure, or the axes passed as ``ax``, are returned.
    """
    save_figure(fig, save)
    if sc.settings.autoshow if show is None else show:
        plt.show()
        return None
    if ax is None:
        return fig
    return ax if isinstance(ax, Axes) else list(np.ravel(ax))
