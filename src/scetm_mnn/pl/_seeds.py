"""Benchmark metrics over seeds: each seed as a point, the mean ± sd as an error bar."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .._docstrings import shared_docstring
from ._utils import category_colors, figure_and_axes, save_or_show

#: The metrics drawn by default (those of them the table has), with their better direction.
STANDARD_METRICS = {
    "best ARI": "higher is better",
    "mean ARI": "higher is better",
    "best NMI": "higher is better",
    "bARI at best ARI": "lower is better",
    "batch entropy": "higher is better",
    "scib Total": "higher is better",
}

_DEFAULT_COLOR, _OTHER_COLOR = "0.2", "0.6"
_HIGHLIGHT_COLOR = category_colors(1)[0]


def _as_list(names: str | Sequence[str] | None) -> list[str] | None:
    return [names] if isinstance(names, str) else None if names is None else list(names)


def _check_table(table: pd.DataFrame, method_key: str, seed_key: str) -> None:
    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"table must be a pandas DataFrame, not {type(table).__name__}.")
    for role, key in (("method_key", method_key), ("seed_key", seed_key)):
        if key not in table.columns:
            raise KeyError(
                f"table has no {role} column {key!r}; its columns are {list(table.columns)}. "
                f"Pass {role}= to name the column."
            )
    if table.empty:
        raise ValueError("table is empty; pass at least one row (one method at one seed).")
    duplicated = table.duplicated([method_key, seed_key])
    if duplicated.any():
        pairs = table.loc[duplicated, [method_key, seed_key]].to_records(index=False).tolist()
        raise ValueError(f"table has more than one row for (method, seed) {pairs}.")


def _metrics(table: pd.DataFrame, metrics: str | Sequence[str] | None, keys: set) -> list[str]:
    numeric = [
        c for c in table.columns if c not in keys and pd.api.types.is_numeric_dtype(table[c])
    ]
    if metrics is None:
        chosen = [m for m in STANDARD_METRICS if m in numeric]
        if not chosen:
            raise ValueError(
                f"table has none of the standard metrics {list(STANDARD_METRICS)}; pass "
                f"metrics= from its numeric columns {numeric}."
            )
        return chosen
    chosen = _as_list(metrics)
    if not chosen:
        raise ValueError(f"metrics is empty; pass some of the numeric columns {numeric}.")
    unknown = [m for m in chosen if m not in table.columns or m in keys]
    if unknown:
        raise KeyError(f"Unknown metrics {unknown}; the table's numeric columns are {numeric}.")
    text = [m for m in chosen if m not in numeric]
    if text:
        raise TypeError(f"metrics {text} are not numeric; the numeric columns are {numeric}.")
    return chosen


def _methods(table: pd.DataFrame, method_key: str, order: Sequence | None) -> list:
    present = list(pd.unique(table[method_key]))
    if order is None:
        return present
    order = _as_list(order)
    unknown = [m for m in order if m not in present]
    if unknown:
        raise KeyError(f"order names methods not in the table {unknown}; it has {present}.")
    if len(set(order)) != len(order):
        raise ValueError(f"order names a method more than once: {order}.")
    return order


@shared_docstring
def seed_metrics(
    table: pd.DataFrame,
    metrics: str | Sequence[str] | None = None,
    method_key: str = "method",
    seed_key: str = "seed",
    order: Sequence[str] | None = None,
    highlight: str | Sequence[str] | None = None,
    *,
    title: str | None = None,
    random_state: int = 0,
    save: str | os.PathLike | None = None,
    ax: Axes | Sequence[Axes] | None = None,
    show: bool | None = None,
) -> Figure | Axes | list[Axes] | None:
    """Plot benchmark metrics over seeds: one panel per metric, one row per method.

    Each seed's value is a faint point, jittered vertically; the mean over the seeds is a
    point with an error bar of ± one standard deviation (``ddof=1``; no bar with one seed).
    Missing values (e.g. topic measures of a method without topics) are left out; a method
    with none in a panel has no point there.

    Parameters
    ----------
    table
        One row per method and seed, e.g. the per-seed table of
        ``benchmarks/pancreas.py --seeds 0 1 2``. Not modified.
    metrics
        The numeric columns to draw, one panel each, in this order. Default: those of the
        standard metrics "best ARI", "mean ARI", "best NMI", "bARI at best ARI", "batch
        entropy" and "scib Total" that the table has.
    method_key
        The column of the method names.
    seed_key
        The column of the seeds; each (method, seed) must occur once.
    order
        The methods to draw, top to bottom. Default: all, in the order they first appear in
        the table. A subset draws only those.
    highlight
        A method or list of methods to draw in colour; the others are grey. Default: every
        method in one dark colour.
    title
        Figure title, e.g. the data set and the number of seeds.
    random_state
        Seed of the vertical jitter of the seeds' points.
    save
        Path to write the figure to (format from the suffix, e.g. ``.png``, ``.pdf``).
    ax
        Draw into these axes (one per metric) instead of a new figure.
    show
        Show the figure (:func:`matplotlib.pyplot.show`); ``None`` follows
        :attr:`scanpy.settings.autoshow`, as scanpy's plots do.

    Returns
    -------
    ``None`` when the figure is shown; otherwise the figure, or the axes passed as ``ax``.
    Each panel has the metric as its title and, for the standard metrics, "higher is
    better" or "lower is better" under its axis. Each method's mean ± sd is an
    :class:`~matplotlib.container.ErrorbarContainer` in ``axes.containers``, labelled with
    the method's name.

    Raises
    ------
    KeyError
        When ``method_key`` or ``seed_key`` is not a column, a metric is not a column, or
        ``order`` or ``highlight`` names a method the table lacks.
    TypeError
        When a metric is not numeric.
    ValueError
        When the table is empty, a (method, seed) occurs twice, or no metric is left.

    Examples
    --------
    %(agg)s
    >>> import pandas as pd
    >>> import scetm_mnn as sm
    >>> per_seed = pd.DataFrame(
    ...     {
    ...         "method": ["pca", "harmony", "scetm_mnn"] * 3,
    ...         "seed": [0, 0, 0, 1, 1, 1, 2, 2, 2],
    ...         "best ARI": [0.92, 0.93, 0.90, 0.91, 0.92, 0.91, 0.93, 0.92, 0.89],
    ...         "bARI at best ARI": [0.04, 0.03, 0.03, 0.05, 0.04, 0.03, 0.04, 0.03, 0.04],
    ...         "batch entropy": [0.37, 0.75, 0.78, 0.36, 0.76, 0.77, 0.37, 0.75, 0.79],
    ...     }
    ... )
    >>> fig = sm.pl.seed_metrics(per_seed, highlight="scetm_mnn", show=False)
    >>> [ax.get_title() for ax in fig.axes]
    ['best ARI', 'bARI at best ARI', 'batch entropy']
    >>> [label.get_text() for label in fig.axes[0].get_yticklabels()]
    ['pca', 'harmony', 'scetm_mnn']

    The mean ± sd of each method, read back from the error bars:

    >>> bar = fig.axes[2].containers[2]
    >>> bar.get_label(), round(float(bar.lines[0].get_xdata()[0]), 3)
    ('scetm_mnn', 0.78)

    Chosen metrics and methods, in a given order:

    >>> fig = sm.pl.seed_metrics(
    ...     per_seed, metrics="batch entropy", order=["scetm_mnn", "pca"], show=False
    ... )
    >>> [label.get_text() for label in fig.axes[0].get_yticklabels()]
    ['scetm_mnn', 'pca']
    """
    _check_table(table, method_key, seed_key)
    chosen = _metrics(table, metrics, {method_key, seed_key})
    methods = _methods(table, method_key, order)
    marked = _as_list(highlight)
    if marked is not None:
        present = list(pd.unique(table[method_key]))
        unknown = [m for m in marked if m not in present]
        if unknown:
            raise KeyError(
                f"highlight names methods not in the table {unknown}; it has {present}."
            )

    def color(method) -> str:
        if marked is None:
            return _DEFAULT_COLOR
        return _HIGHLIGHT_COLOR if method in marked else _OTHER_COLOR

    height = max(2.2, 0.8 + 0.3 * len(methods))
    kwargs = {"sharey": True} if ax is None else {}
    fig, axes = figure_and_axes(ax, len(chosen), (2.4 * len(chosen) + 1.2, height), **kwargs)
    groups = table.groupby(method_key, sort=False)
    rng = np.random.default_rng(random_state)
    positions = np.arange(len(methods))
    for axis, metric in zip(axes, chosen):
        for y, method in zip(positions, methods):
            values = groups.get_group(method)[metric].dropna().to_numpy(dtype=float)
            if values.size == 0:
                continue
            jitter = rng.uniform(-0.18, 0.18, size=values.size)
            c = color(method)
            axis.scatter(values, y + jitter, s=12, color=c, alpha=0.35, linewidths=0, zorder=2)
            sd = [values.std(ddof=1)] if values.size > 1 else None
            axis.errorbar(
                [values.mean()],
                [y],
                xerr=sd,
                fmt="o",
                markersize=5,
                color=c,
                elinewidth=1.3,
                capsize=2.5,
                zorder=3,
                label=str(method),
            )
        axis.set_title(metric, fontsize=10)
        axis.set_xlabel(STANDARD_METRICS.get(metric, ""), fontsize=8)
        axis.set_yticks(positions, [str(m) for m in methods], fontsize=8)
        axis.set_ylim(len(methods) - 0.5, -0.5)  # the first method on top
        axis.tick_params(axis="x", labelsize=8)
        axis.grid(axis="x", alpha=0.3, linewidth=0.5)
        for side in ("top", "right"):
            axis.spines[side].set_visible(False)
        if marked is not None:
            for label, method in zip(axis.get_yticklabels(), methods):
                if method in marked:
                    label.set_color(_HIGHLIGHT_COLOR)
                    label.set_fontweight("bold")
    if title is not None:
        fig.suptitle(title)
    return save_or_show(fig, ax, save, show)
