"""Tests for the figures: integration UMAPs, Leiden sweep curves, topic heatmaps, seeds."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
from matplotlib.axes import Axes
from matplotlib.collections import PathCollection
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure

from scetm_mnn import pl

N_CELLS, N_GENES, N_TOPICS = 180, 30, 4


@pytest.fixture(autouse=True)
def _close_figures():
    # scanpy's default (autoshow) would show and return None; these tests read the figures.
    previous, sc.settings.autoshow = sc.settings.autoshow, False
    yield
    sc.settings.autoshow = previous
    plt.close("all")


@pytest.fixture(scope="module")
def adata() -> ad.AnnData:
    """Three cell types in two batches with an embedding and fake UMAP coordinates."""
    rng = np.random.default_rng(0)
    labels = np.arange(N_CELLS) % 3
    batches = (np.arange(N_CELLS) // 3) % 2
    emb = 10.0 * np.eye(3, 8)[labels] + rng.normal(size=(N_CELLS, 8))
    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical([f"type{i}" for i in labels]),
            "batch": pd.Categorical([f"b{i}" for i in batches]),
            "clusters": pd.Categorical([str(i) for i in labels]),
        },
        index=[f"cell{i}" for i in range(N_CELLS)],
    )
    return ad.AnnData(
        X=rng.poisson(1.0, size=(N_CELLS, N_GENES)).astype(np.float32),
        obs=obs,
        var=pd.DataFrame(index=[f"gene{i}" for i in range(N_GENES)]),
        obsm={"X_emb": emb.astype(np.float32), "X_umap_emb": emb[:, :2].astype(np.float32)},
    )


def snapshot(adata: ad.AnnData) -> tuple:
    return adata.obs.copy(), sorted(adata.obsm.keys()), sorted(adata.uns.keys())


def assert_unchanged(adata: ad.AnnData, before: tuple) -> None:
    obs, obsm_keys, uns_keys = before
    pd.testing.assert_frame_equal(adata.obs, obs)
    assert sorted(adata.obsm.keys()) == obsm_keys
    assert sorted(adata.uns.keys()) == uns_keys


def assert_written(path, magic: bytes) -> None:
    assert path.exists()
    assert path.read_bytes().startswith(magic)


PNG, PDF = b"\x89PNG", b"%PDF"


def test_integration_umap_computes_on_a_copy(adata, tmp_path):
    before = snapshot(adata)
    fig = pl.integration_umap(
        adata, "X_emb", "batch", "cell_type", save=tmp_path / "umap.png", title="demo"
    )
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 3
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[0].startswith("Leiden clusters")
    assert titles[1:] == ["Batch (batch)", "Cell type (cell_type)"]
    assert fig.axes[1].get_legend() is not None
    assert fig.get_suptitle() == "demo"
    assert_written(tmp_path / "umap.png", PNG)
    assert_unchanged(adata, before)


def test_integration_umap_with_given_umap_and_clusters(adata, tmp_path):
    before = snapshot(adata)
    fig = pl.integration_umap(
        adata,
        "X_emb",
        "batch",
        "cell_type",
        cluster_key="clusters",
        umap_key="X_umap_emb",
        save=tmp_path / "sub" / "umap.pdf",
    )
    assert len(fig.axes) == 3
    assert fig.axes[0].get_title() == "Clusters (clusters)"
    assert len(fig.axes[2].get_legend().get_texts()) == 3
    np.testing.assert_allclose(
        fig.axes[0].collections[0].get_offsets().min(axis=0),
        adata.obsm["X_umap_emb"].min(axis=0),
    )
    assert_written(tmp_path / "sub" / "umap.pdf", PDF)
    assert_unchanged(adata, before)


def test_integration_umap_reuses_x_umap_of_the_same_rep(adata):
    copy = adata.copy()
    copy.obsm["X_umap"] = copy.obsm["X_umap_emb"] + 100.0
    copy.uns["neighbors"] = {"params": {"use_rep": "X_emb"}}
    fig = pl.integration_umap(copy, "X_emb", "batch", "cell_type", cluster_key="clusters")
    assert fig.axes[1].collections[0].get_offsets().min() >= 90.0


def test_integration_umap_bad_keys(adata):
    with pytest.raises(KeyError, match="umap_key"):
        pl.integration_umap(adata, "X_emb", "batch", "cell_type", umap_key="X_nope")
    with pytest.raises(KeyError, match="cluster_key"):
        pl.integration_umap(adata, "X_emb", "batch", "cell_type", cluster_key="nope")


def test_integration_umap_on_a_subsample_says_so(adata):
    from scetm_mnn import tl

    copy = adata.copy()
    copy.obs["cell_type"] = copy.obs["cell_type"].cat.add_categories("rare")
    copy.obs.iloc[[0, 3], copy.obs.columns.get_loc("cell_type")] = "rare"  # one per batch
    before = snapshot(copy)
    kwargs = {"cluster_key": "clusters", "umap_key": "X_umap_emb", "random_state": 4}
    fig = pl.integration_umap(copy, "X_emb", "batch", "cell_type", max_cells=60, **kwargs)
    keep = tl.stratified_subsample(copy, ["batch", "cell_type"], 60, random_state=4)
    assert 60 <= len(keep) <= 60 + 8
    assert fig.get_suptitle() == f"X_emb\nstratified subsample of {len(keep)} of 180 cells"
    for ax in fig.axes:  # every panel draws the drawn cells, at their given coordinates
        xy = ax.collections[0].get_offsets()
        np.testing.assert_allclose(np.sort(xy, axis=0), np.sort(copy.obsm["X_umap_emb"][keep], 0))
    legend = [t.get_text() for t in fig.axes[2].get_legend().get_texts()]
    assert "rare" in legend  # the two-cell type is kept
    assert_unchanged(copy, before)
    # Drawing into given axes without a title: the first panel says it.
    _, axes = plt.subplots(1, 3)
    pl.integration_umap(copy, "X_emb", "batch", "cell_type", max_cells=60, ax=axes, **kwargs)
    assert axes[0].get_title().endswith(f"\nstratified subsample of {len(keep)} of 180 cells")
    # max_cells=None or above the cells: every cell, no note.
    for max_cells in (None, 180):
        fig = pl.integration_umap(copy, "X_emb", "batch", None, max_cells=max_cells, **kwargs)
        assert fig.get_suptitle() == "X_emb"
        assert len(fig.axes[0].collections[0].get_offsets()) == 180
    with pytest.raises(TypeError, match="max_cells is a number of cells"):
        pl.integration_umap(copy, "X_emb", "batch", None, max_cells=0.5)


@pytest.fixture(scope="module")
def sweep() -> pd.DataFrame:
    resolution = np.array([0.1, 0.2, 0.5, 1.0])
    return pd.DataFrame(
        {
            "resolution": resolution,
            "n_clusters": [3, 4, 6, 9],
            "ARI": [0.5, 0.9, 0.7, 0.4],
            "NMI": [0.6, 0.85, 0.8, 0.7],
            "bARI": [0.05, 0.02, 0.03, 0.04],
        }
    )


@pytest.mark.parametrize("suffix", ["png", "pdf"])
def test_leiden_sweep_plot(sweep, tmp_path, suffix):
    fig = pl.leiden_sweep(sweep, save=tmp_path / f"sweep.{suffix}", bari_floor=0.01)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 1
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert labels[:3] == ["ARI", "NMI", "bARI"]
    assert "best ARI (0.2)" in labels
    assert_written(tmp_path / f"sweep.{suffix}", PNG if suffix == "png" else PDF)


def test_leiden_sweep_plot_compares_methods(sweep):
    fig = pl.leiden_sweep({"scETM": sweep, "MNN": sweep.assign(ARI=sweep["ARI"] / 2)})
    assert len(fig.axes) == 3
    assert [len(ax.get_lines()) for ax in fig.axes] == [2, 2, 2]
    with pytest.raises(KeyError, match="bARI"):
        pl.leiden_sweep(sweep.drop(columns="bARI"))


def test_leiden_sweep_plot_notes_a_subsample(sweep):
    sub = sweep.copy()
    sub.attrs.update(n_cells=1000, n_obs=250_000)
    assert pl.leiden_sweep(sub).axes[0].get_title() == (
        "Leiden on a stratified subsample of 1,000 of 250,000 cells"
    )
    fig = pl.leiden_sweep({"all": sweep, "sub": sub})
    labels = fig.axes[-1].get_legend_handles_labels()[1]
    assert labels == ["all", "sub (stratified subsample of 1,000 of 250,000 cells)"]
    sub.attrs.update(n_cells=250_000)  # all the cells: nothing to say
    assert pl.leiden_sweep(sub).axes[0].get_title() == ""


class FakeTopicModel:
    """Duck-typed stand-in for the topic model's public methods."""

    def __init__(self, adata: ad.AnnData, n_topics: int = N_TOPICS, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.adata = adata
        self.topics = [f"topic_{k}" for k in range(n_topics)]
        self.beta = pd.DataFrame(
            rng.normal(size=(n_topics, adata.n_vars)), index=self.topics, columns=adata.var_names
        )
        self.theta = rng.dirichlet(np.ones(n_topics), size=adata.n_obs)

    def get_topic_gene_matrix(self) -> pd.DataFrame:
        return self.beta

    def get_top_genes(self, n: int = 10) -> pd.DataFrame:
        order = np.argsort(-self.beta.to_numpy(), axis=1)[:, :n]
        return pd.DataFrame(self.beta.columns.to_numpy()[order].T, columns=self.topics)

    def get_topic_proportions(self, adata: ad.AnnData | None = None) -> np.ndarray:
        adata = self.adata if adata is None else adata
        return self.theta[: adata.n_obs]


@pytest.mark.parametrize("suffix", ["png", "pdf"])
def test_topic_heatmap(adata, tmp_path, suffix):
    model = FakeTopicModel(adata)
    before = snapshot(adata)
    fig = pl.topic_heatmap(
        model, n_top=3, save=tmp_path / f"topics.{suffix}", normalize=None, order=False
    )
    assert_unchanged(adata, before)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 4  # two heatmaps, two colour bars
    genes_ax, theta_ax = fig.axes[:2]
    top = model.get_top_genes(n=3)
    expected = list(dict.fromkeys(top.T.to_numpy().ravel()))
    assert [t.get_text() for t in genes_ax.get_xticklabels()] == expected
    assert [t.get_text() for t in theta_ax.get_xticklabels()] == ["type0", "type1", "type2"]
    assert [t.get_text() for t in genes_ax.get_yticklabels()] == model.topics
    mean_theta = theta_ax.get_images()[0].get_array()
    assert mean_theta.shape == (N_TOPICS, 3)
    np.testing.assert_allclose(mean_theta.sum(axis=0), 1.0)
    assert_written(tmp_path / f"topics.{suffix}", PNG if suffix == "png" else PDF)


def test_topic_heatmap_subset_and_other_adata(adata):
    model = FakeTopicModel(adata)
    fig = pl.topic_heatmap(model, adata=adata[:60], topics=[0, "topic_2"], n_top=2, order=False)
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["topic_0", "topic_2"]


def enriched_model(adata: ad.AnnData) -> FakeTopicModel:
    """Enrichment (mean θ in type / in the others): type0 → topic_3, type1 → topic_0,
    type2 → topic_2 (ratio 0.2 / 0.1) although its largest θ is topic_3; topic_1 is no
    type's best."""
    model = FakeTopicModel(adata)
    profiles = {
        "type0": [0.1, 0.1, 0.1, 0.7],
        "type1": [0.6, 0.2, 0.1, 0.1],
        "type2": [0.2, 0.2, 0.2, 0.4],
    }
    model.theta = np.array([profiles[t] for t in adata.obs["cell_type"].astype(str)])
    return model


def test_topic_heatmap_orders_diagonally_and_normalizes(adata):
    model = enriched_model(adata)
    fig = pl.topic_heatmap(model, n_top=2)
    genes_ax, theta_ax = fig.axes[:2]
    topics = [t.get_text() for t in genes_ax.get_yticklabels()]
    types = [t.get_text() for t in theta_ax.get_xticklabels()]
    assert topics == ["topic_0", "topic_2", "topic_3", "topic_1"]
    assert types == ["type1", "type2", "type0"]
    top = model.get_top_genes(n=2)
    assert [t.get_text() for t in genes_ax.get_xticklabels()] == list(
        dict.fromkeys(top[topics].T.to_numpy().ravel())
    )
    values = theta_ax.get_images()[0].get_array()  # topics × types, each row / its max
    np.testing.assert_allclose(values.max(axis=1), 1.0)
    np.testing.assert_allclose(np.diag(values), 1.0)
    np.testing.assert_allclose(values[1], [0.5, 1.0, 0.5])  # topic_2 over type1/2/0
    assert "topic's max" in fig.axes[3].get_ylabel()
    raw = pl.topic_heatmap(model, n_top=2, normalize=None)
    np.testing.assert_allclose(raw.axes[1].get_images()[0].get_array()[:, 0], [0.6, 0.1, 0.1, 0.2])
    assert raw.axes[3].get_ylabel() == "mean θ"


def test_topic_heatmap_normalize_by_type(adata):
    model = enriched_model(adata)
    fig = pl.topic_heatmap(model, n_top=2, normalize="type", order=False)
    values = fig.axes[1].get_images()[0].get_array()
    np.testing.assert_allclose(values.max(axis=0), 1.0)
    np.testing.assert_allclose(values[:, 2], np.array([0.2, 0.2, 0.2, 0.4]) / 0.4)
    assert "cell type's max" in fig.axes[3].get_ylabel()
    with pytest.raises(ValueError, match="normalize"):
        pl.topic_heatmap(model, normalize="row")


def test_topic_heatmap_orders_within_the_chosen_topics(adata):
    model = enriched_model(adata)
    fig = pl.topic_heatmap(model, topics=["topic_1", "topic_3"], n_top=2)
    # Among topic_1/topic_3: type1 and type2 tie on topic_1 (0.2 / 0.15), type0 → topic_3.
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["topic_1", "topic_3"]
    assert [t.get_text() for t in fig.axes[1].get_xticklabels()] == ["type1", "type2", "type0"]


def test_show_follows_scanpy(adata, sweep, monkeypatch):
    shown = []
    monkeypatch.setattr(plt, "show", lambda: shown.append(True))
    model = FakeTopicModel(adata)
    calls = {
        "integration_umap": lambda **kw: pl.integration_umap(
            adata, "X_emb", "batch", "cell_type", cluster_key="clusters", **kw
        ),
        "leiden_sweep": lambda **kw: pl.leiden_sweep(sweep, **kw),
        "topic_heatmap": lambda **kw: pl.topic_heatmap(model, n_top=2, **kw),
    }
    for name, call in calls.items():
        shown.clear()
        assert call(show=True) is None and shown == [True], name
        assert isinstance(call(show=False), Figure) and len(shown) == 1, name
        sc.settings.autoshow = True
        assert call() is None and len(shown) == 2, name  # None: scanpy's autoshow
        sc.settings.autoshow = False
        assert isinstance(call(), Figure) and len(shown) == 2, name


def test_plots_draw_into_given_axes(adata, sweep, tmp_path):
    model = FakeTopicModel(adata)
    fig, axes = plt.subplots(2, 3)
    got = pl.integration_umap(
        adata, "X_emb", "batch", "cell_type", cluster_key="clusters", ax=axes[0], show=False
    )
    assert got == list(axes[0]) and axes[0, 1].get_title() == "Batch (batch)"
    assert pl.leiden_sweep(sweep, ax=axes[1, 0], show=False) is axes[1, 0]
    assert axes[1, 0].get_ylabel() == "score"
    got = pl.topic_heatmap(model, n_top=2, ax=axes[1, 1:], save=tmp_path / "mine.png", show=False)
    assert got == list(axes[1, 1:]) and axes[1, 2].get_images()
    assert_written(tmp_path / "mine.png", PNG)  # save= writes the figure that holds ax
    assert len(fig.axes) == 8  # the six given axes and the heatmap's two colour bars
    with pytest.raises(TypeError, match="sequence of 3 matplotlib Axes"):
        pl.integration_umap(adata, "X_emb", "batch", "cell_type", ax=axes[1, 1:])
    with pytest.raises(TypeError, match="one matplotlib Axes"):
        pl.leiden_sweep(sweep, ax=list(axes[0]))
    assert isinstance(axes[0, 0], Axes)


def test_integration_umap_without_labels(adata):
    fig = pl.integration_umap(adata, "X_emb", "batch", None, cluster_key="clusters")
    assert [ax.get_title() for ax in fig.axes] == ["Clusters (clusters)", "Batch (batch)"]


def test_topic_heatmap_reads_theta_from_obsm(adata):
    model = enriched_model(adata)
    copy = adata.copy()
    copy.obsm["X_topics"] = model.theta
    model.theta = np.full_like(model.theta, 0.25)  # the model's own θ is not used
    fig = pl.topic_heatmap(model, adata=copy, n_top=2, normalize=None, theta_key="X_topics")
    values = fig.axes[1].get_images()[0].get_array()
    assert values.max() == pytest.approx(0.7)
    with pytest.raises(KeyError, match="X_nope"):
        pl.topic_heatmap(model, adata=copy, theta_key="X_nope")


# -- seed_metrics --------------------------------------------------------------------------

SEED_METHODS = ["pca", "harmony", "scetm_mnn", "mnn_pca"]
SEED_LIST = [0, 1, 2]


@pytest.fixture
def per_seed() -> pd.DataFrame:
    """A per-seed table as ``benchmarks/pancreas.py`` writes it, rows by seed then method."""
    rng = np.random.default_rng(0)
    n = len(SEED_METHODS) * len(SEED_LIST)
    return pd.DataFrame(
        {
            "method": SEED_METHODS * len(SEED_LIST),
            "best ARI": rng.uniform(0.7, 0.95, n),
            "mean ARI": rng.uniform(0.5, 0.9, n),
            "bARI at best ARI": rng.uniform(0.0, 0.1, n),
            "batch entropy": rng.uniform(0.3, 0.8, n),
            "min_ratio": np.where(np.arange(n) % 4 == 2, rng.uniform(1, 40, n), np.nan),
            "note": ["x"] * n,
            "time s": rng.uniform(1, 100, n),
            "seed": np.repeat(SEED_LIST, len(SEED_METHODS)),
        }
    )


def error_bars(axis) -> dict[str, tuple[float, float | None]]:
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


def test_seed_metrics_one_panel_per_default_metric_with_mean_and_sd(per_seed):
    before = per_seed.copy()
    fig = pl.seed_metrics(per_seed)
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
        got = error_bars(axis)
        assert list(got) == SEED_METHODS
        for method, (mean, half) in got.items():
            values = per_seed.loc[per_seed["method"] == method, metric]
            assert mean == pytest.approx(values.mean())
            assert half == pytest.approx(values.std(ddof=1))
        # the seeds' own points: one per seed and method, at the table's values
        scatters = [c for c in axis.collections if isinstance(c, PathCollection)]
        assert len(scatters) == len(SEED_METHODS)
        points = np.concatenate([c.get_offsets()[:, 0] for c in scatters])
        assert sorted(points) == pytest.approx(sorted(per_seed[metric]))
    pd.testing.assert_frame_equal(per_seed, before)


def test_seed_metrics_one_seed_has_no_bar_and_missing_values_are_left_out(per_seed):
    one = per_seed[per_seed["seed"] == 0]
    fig = pl.seed_metrics(one, metrics="best ARI")
    assert all(half is None for _, half in error_bars(fig.axes[0]).values())
    # min_ratio exists only for scetm_mnn (a topic model): only it has a point
    got = error_bars(pl.seed_metrics(per_seed, metrics=["min_ratio"]).axes[0])
    assert list(got) == ["scetm_mnn"]
    values = per_seed.loc[per_seed["method"] == "scetm_mnn", "min_ratio"]
    assert got["scetm_mnn"] == pytest.approx((values.mean(), values.std(ddof=1)))


def test_seed_metrics_order_and_highlight(per_seed, tmp_path):
    fig = pl.seed_metrics(
        per_seed,
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
    got = error_bars(axis)
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
        for c in pl.seed_metrics(per_seed, metrics="best ARI", highlight="pca").axes[0].containers
    }
    assert colors["pca"] != colors["harmony"] == colors["scetm_mnn"]
    fig = pl.seed_metrics(per_seed, metrics="best ARI")
    assert len({to_rgba(c.lines[0].get_color()) for c in fig.axes[0].containers}) == 1


def test_seed_metrics_draws_into_given_axes(per_seed):
    _, axes = plt.subplots(1, 3)
    assert pl.seed_metrics(per_seed, metrics=["best ARI", "mean ARI"], ax=axes[1:]) == list(
        axes[1:]
    )
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
def test_seed_metrics_errors(per_seed, change, kwargs, error, match):
    bad = change(per_seed)
    before = bad.copy() if isinstance(bad, pd.DataFrame) else None
    with pytest.raises(error, match=match):
        pl.seed_metrics(bad, **kwargs)
    if before is not None:
        pd.testing.assert_frame_equal(bad, before)


def test_topic_heatmap_shows_the_annotated_labels(sim_topic_model):
    from scetm_mnn import tl

    model = sim_topic_model
    first = model.topic_names[0]
    fig = pl.topic_heatmap(model, label_key="cell_type", topic_labels={first: "beta!"}, show=False)
    assert "beta!" in [t.get_text() for t in fig.axes[0].get_yticklabels()]
    plt.close(fig)
    marker_of = model.adata.var["marker_of"].astype(str)
    sets = {t: list(marker_of.index[marker_of == t]) for t in ("type_0", "type_1")}
    try:
        tl.annotate_topics(model, sets, n_top=20, key_added="topic_annotation")
        fig = pl.topic_heatmap(model, label_key="cell_type", show=False)
        shown = [t.get_text() for t in fig.axes[0].get_yticklabels()]
        assert sum("· type_0 (FDR" in t for t in shown) == 1
        plt.close(fig)
    finally:
        model.adata.uns.pop("topic_annotation", None)
