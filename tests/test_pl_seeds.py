"""Tests for :func:`scetm_mnn.pl.seed_metrics`: benchmark metrics over seeds."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
from matplotlib.collections import PathCollection
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure

from scetm_mnn import pl

METHODS = ["pca", "harmony", "scetm_mnn", "mnn_pca"]
SEEDS = [0, 1, 2]


@pytest.fixture(autouse=True)
def _close_figures():
    previous, sc.settings.autoshow = sc.settings.autoshow, False
    yield
    sc.settings.autoshow = previous
    plt.close("all")


@pytest.fixture
def table() -> pd.DataFrame:
    """A per-seed table as ``benchmarks/pancreas.py`` writes it, rows by seed then method."""
    rng = np.random.default_rng(0)
    n = len(METHODS) * len(SEEDS)
    return pd.DataFrame(
        {
            "method": METHODS * len(SEEDS),
            "best ARI": rng.uniform(0.7, 0.95, n),
            "mean ARI": rng.uniform(0.5, 0.9, n),
            "bARI at best ARI": rng.uniform(0.0, 0.1, n),
            "batch entropy": rng.uniform(0.3, 0.8, n),
            "min_ratio": np.where(np.arange(n) % 4 == 2, rng.uniform(1, 40, n), np.nan),
            "note": ["x"] * n,
            "time s": rng.uniform(1, 100, n),
            "seed": np.repeat(SEEDS, len(METHODS)),
        }
    )


def bars(axis) -> dict[str, tuple[float, float | None]]:
    """Method → (plotted mean, error bar half-length or None), read from the artists."""
    out = {}
    for container in axis.containers:
        x = float(container.lines[0].get_xdata()[0])
        half = None
        if container.has_xerr:
            (segment,) = container.lines[2][0].get_segments()
            half = float(segment[1, 0] - segment[0, 0]) / 2
            assert segment[0, 0] == pytest.approx(x - half)
        out[container.get_label()] = (x, half)
    return out


def test_one_panel_per_default_metric_with_mean_and_sd(table):
    before = table.copy()
    fig = pl.seed_metrics(table)
    assert isinstance(fig, Figure)
    # the standard metrics the table has, not the topic, text or time columns
    assert [ax.get_title() for ax in fig.axes] == [
        "best ARI",
        "mean ARI",
        "bARI at best ARI",
        "batch entropy",
    ]
    assert fig.axes[2].get_xlabel() == "lower is better"
    for axis in fig.axes:
        metric = axis.get_title()
        got = bars(axis)
        assert list(got) == METHODS
        for method, (mean, half) in got.items():
            values = table.loc[table["method"] == method, metric]
            assert mean == pytest.approx(values.mean())
            assert half == pytest.approx(values.std(ddof=1))
        # the seeds' own points: one per seed and method, at the table's values
        scatters = [c for c in axis.collections if isinstance(c, PathCollection)]
        assert len(scatters) == len(METHODS)
        points = np.concatenate([c.get_offsets()[:, 0] for c in scatters])
        assert sorted(points) == pytest.approx(sorted(table[metric]))
    pd.testing.assert_frame_equal(table, before)


def test_one_seed_has_no_bar_and_missing_values_are_left_out(table):
    one = table[table["seed"] == 0]
    fig = pl.seed_metrics(one, metrics="best ARI")
    assert all(half is None for _, half in bars(fig.axes[0]).values())
    # min_ratio exists only for scetm_mnn (a topic model): only it has a point
    got = bars(pl.seed_metrics(table, metrics=["min_ratio"]).axes[0])
    assert list(got) == ["scetm_mnn"]
    values = table.loc[table["method"] == "scetm_mnn", "min_ratio"]
    assert got["scetm_mnn"] == pytest.approx((values.mean(), values.std(ddof=1)))


def test_order_and_highlight(table, tmp_path):
    fig = pl.seed_metrics(
        table,
        metrics=["batch entropy", "time s"],
        order=["mnn_pca", "pca", "scetm_mnn"],
        highlight=["scetm_mnn", "mnn_pca"],
        title="Baron human",
        save=tmp_path / "seeds.png",
    )
    assert (tmp_path / "seeds.png").read_bytes().startswith(b"\x89PNG")
    assert fig.get_suptitle() == "Baron human"
    assert [ax.get_title() for ax in fig.axes] == ["batch entropy", "time s"]
    axis = fig.axes[0]
    assert [t.get_text() for t in axis.get_yticklabels()] == ["mnn_pca", "pca", "scetm_mnn"]
    assert axis.get_ylim() == (2.5, -0.5)  # the first method on top
    got = bars(axis)
    assert list(got) == ["mnn_pca", "pca", "scetm_mnn"]  # harmony is not in order
    ys = {c.get_label(): c.lines[0].get_ydata()[0] for c in axis.containers}
    assert ys == {"mnn_pca": 0, "pca": 1, "scetm_mnn": 2}
    colors = {c.get_label(): to_rgba(c.lines[0].get_color()) for c in axis.containers}
    assert colors["scetm_mnn"] == colors["mnn_pca"] != colors["pca"]
    assert colors["pca"] == to_rgba("0.6")  # the others in grey
    bold = {t.get_text(): t.get_fontweight() for t in axis.get_yticklabels()}
    assert bold == {"mnn_pca": "bold", "pca": "normal", "scetm_mnn": "bold"}
    # one name highlights one method; without highlight all share one colour
    colors = {
        c.get_label(): to_rgba(c.lines[0].get_color())
        for c in pl.seed_metrics(table, metrics="best ARI", highlight="pca").axes[0].containers
    }
    assert colors["pca"] != colors["harmony"] == colors["scetm_mnn"]
    fig = pl.seed_metrics(table, metrics="best ARI")
    assert len({to_rgba(c.lines[0].get_color()) for c in fig.axes[0].containers}) == 1


def test_draws_into_given_axes(table):
    _, axes = plt.subplots(1, 3)
    assert pl.seed_metrics(table, metrics=["best ARI", "mean ARI"], ax=axes[1:]) == list(axes[1:])
    assert axes[2].get_title() == "mean ARI" and not axes[0].containers


@pytest.mark.parametrize(
    ("change", "kwargs", "error", "match"),
    [
        (lambda t: t.drop(columns="method"), {}, KeyError, "no method_key column 'method'"),
        (lambda t: t.drop(columns="seed"), {}, KeyError, "no seed_key column 'seed'"),
        (lambda t: t.rename(columns={"seed": "run"}), {"seed_key": "rep"}, KeyError, "'rep'"),
        (lambda t: t.iloc[:0], {}, ValueError, "table is empty"),
        (lambda t: pd.concat([t, t.iloc[:1]]), {}, ValueError, r"\('pca', 0\)"),
        (lambda t: t, {"metrics": "ARI"}, KeyError, r"Unknown metrics \['ARI'\].*'best ARI'"),
        (lambda t: t, {"metrics": "seed"}, KeyError, "Unknown metrics"),
        (lambda t: t, {"metrics": ["note"]}, TypeError, r"\['note'\] are not numeric"),
        (lambda t: t, {"metrics": []}, ValueError, "metrics is empty"),
        (lambda t: t[["method", "seed", "time s"]], {}, ValueError, "none of the standard"),
        (lambda t: t, {"order": ["pca", "scvi"]}, KeyError, r"not in the table \['scvi'\]"),
        (lambda t: t, {"order": ["pca", "pca"]}, ValueError, "more than once"),
        (lambda t: t, {"highlight": "ours"}, KeyError, r"highlight .* \['ours'\]"),
        (lambda t: t.to_dict(), {}, TypeError, "must be a pandas DataFrame"),
    ],
)
def test_errors(table, change, kwargs, error, match):
    bad = change(table)
    before = bad.copy() if isinstance(bad, pd.DataFrame) else None
    with pytest.raises(error, match=match):
        pl.seed_metrics(bad, **kwargs)
    if before is not None:
        pd.testing.assert_frame_equal(bad, before)
