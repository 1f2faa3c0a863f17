"""Helpers shared by the figures: colours, categorical scatters and saving."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from scanpy.plotting import palettes

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
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    logger.info("Saved figure to %s", path)
