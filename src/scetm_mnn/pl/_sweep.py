"""Leiden sweep curves: ARI, NMI and bARI against the resolution."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .._docstrings import shared_docstring
from ..tl._leiden import SWEEP_COLUMNS, sweep_subsample
from ._utils import category_colors, figure_and_axes, save_or_show

_METRICS = (
    ("ARI", "ARI (higher is better)"),
    ("NMI", "NMI (higher is better)"),
    ("bARI", "bARI (lower is better)"),
)


def _reference_line(ax, value: float) -> None:
    """The dashed line of the cell types' own bARI."""
    ax.axhline(value, color="grey", linestyle="--", linewidth=1, label="bARI of the cell types")


def _check(df: pd.DataFrame, name: str) -> None:
    missing = [c for c in SWEEP_COLUMNS if c not in df.columns]
    if missing:
        raise KeyError(f"{name} lacks the leiden_sweep columns {missing}.")


def _style(ax, ylabel: str) -> None:
    ax.set_xlabel("Leiden resolution")
    ax.set_ylabel(ylabel)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3, linewidth=0.5)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


@shared_docstring
def leiden_sweep(
    df: pd.DataFrame | Mapping[str, pd.DataFrame],
    save: str | os.PathLike | None = None,
    title: str | None = None,
    bari_reference: float | None = None,
    *,
    bari_floor: float | None = None,
    ax: Axes | Sequence[Axes] | None = None,
    show: bool | None = None,
) -> Figure | Axes | list[Axes] | None:
    """Plot a :func:`scetm_mnn.tl.leiden_sweep` table against the resolution.

    Parameters
    ----------
    df
        One sweep table: one axes with the ARI, NMI and bARI curves and a dotted line at
        the best-ARI resolution. Or a mapping ``{method: table}``: three axes (ARI, NMI,
        bARI), one curve per method. A table clustered on a subsample
        (:func:`scetm_mnn.tl.leiden_sweep` with ``subsample``, whose ``attrs`` say so) is
        marked: "Leiden on a stratified subsample of N of M cells" above its axes, or
        after its method's name in the legend.
    save
        Path to write the figure to (format from the suffix, e.g. ``.png``, ``.pdf``).
    title
        Figure title.
    bari_reference
        If given (e.g. :func:`scetm_mnn.tl.label_batch_ari`, the bARI of the cell types
        themselves), a dashed horizontal line marks it on the bARI axis. It is a reference,
        not a floor: clusterings that merge or split cell types can go below it.
    bari_floor
        Deprecated name of ``bari_reference``.
    ax
        Draw into these axes instead of a new figure: one Axes for one table, three (ARI,
        NMI, bARI) for a mapping.
    show
        Show the figure (:func:`matplotlib.pyplot.show`); ``None`` follows
        :attr:`scanpy.settings.autoshow`, as scanpy's plots do.

    Returns
    -------
    ``None`` when the figure is shown; otherwise the figure, or the axes passed as ``ax``
    (scanpy's convention: pass ``show=False`` to get them). Every axis runs from 0 to 1;
    ARI and NMI near 1 mean clusters that match the cell types, a bARI near 0 (or near the
    reference) clusters that do not follow the batches.

    Examples
    --------
    %(sweep_figure)s
    >>> fig = sm.pl.leiden_sweep(sweep, bari_reference=0.03, title="one method", show=False)
    >>> len(fig.axes)
    1
    >>> fig = sm.pl.leiden_sweep({"pca": sweep, "ours": sweep.assign(ARI=0.95)}, show=False)
    >>> [ax.get_ylabel() for ax in fig.axes]
    ['ARI (higher is better)', 'NMI (higher is better)', 'bARI (lower is better)']

    Into axes of your own, as with scanpy's plots:

    >>> import matplotlib.pyplot as plt
    >>> fig, (left, right) = plt.subplots(1, 2)
    >>> sm.pl.leiden_sweep(sweep, ax=right, show=False) is right
    True

    A sweep on a subsample (its ``attrs``, as :func:`scetm_mnn.tl.leiden_sweep` sets them)
    says so:

    >>> sweep.attrs.update(n_cells=200_000, n_obs=1_000_000)
    >>> sm.pl.leiden_sweep(sweep, show=False).axes[0].get_title()
    'Leiden on a stratified subsample of 200,000 of 1,000,000 cells'
    """
    if bari_floor is not None:
        warnings.warn(
            "bari_floor is deprecated: the bARI of the cell types is a reference, not a "
            "floor. Pass bari_reference instead.",
            FutureWarning,
            stacklevel=2,
        )
        if bari_reference is None:
            bari_reference = bari_floor
    if isinstance(df, pd.DataFrame):
        _check(df, "df")
        fig, (axis,) = figure_and_axes(ax, 1, (5.0, 3.6))
        for (metric, _), color in zip(_METRICS, category_colors(len(_METRICS))):
            axis.plot(
                df["resolution"], df[metric], marker="o", markersize=3, color=color, label=metric
            )
        best = df.loc[df["ARI"].idxmax(), "resolution"]
        axis.axvline(best, color="grey", linestyle=":", linewidth=1, label=f"best ARI ({best:g})")
        if bari_reference is not None:
            _reference_line(axis, bari_reference)
        _style(axis, "score")
        if (note := sweep_subsample(df)) is not None:
            axis.set_title(f"Leiden on a {note}", fontsize=9)
        axis.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, fontsize=8)
    else:
        if not df:
            raise ValueError("df is an empty mapping; pass at least one sweep table.")
        for name, table in df.items():
            _check(table, f"df[{name!r}]")
        fig, axes = figure_and_axes(ax, 3, (13.0, 3.6))
        colors = category_colors(len(df))
        for axis, (metric, label) in zip(axes, _METRICS):
            for (name, table), color in zip(df.items(), colors):
                axis.plot(
                    table["resolution"],
                    table[metric],
                    marker="o",
                    markersize=3,
                    color=color,
                    label=name if (note := sweep_subsample(table)) is None else f"{name} ({note})",
                )
            if metric == "bARI" and bari_reference is not None:
                _reference_line(axis, bari_reference)
            _style(axis, label)
        axes[-1].legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, fontsize=8)
    if title is not None:
        fig.suptitle(title)
    return save_or_show(fig, ax, save, show)
