"""Tests for the topic-meaning measures: specificity, markers, diversity, peakedness."""

from __future__ import annotations

import logging

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from scetm_mnn import datasets, tl

K = 4


def make_adata(theta: np.ndarray, labels: list[str], key: str = "X_topics") -> ad.AnnData:
    obs = pd.DataFrame(
        {"cell_type": pd.Categorical(labels)}, index=[f"c{i}" for i in range(len(labels))]
    )
    return ad.AnnData(obs=obs, obsm={key: np.asarray(theta, dtype=np.float32)})


@pytest.fixture
def enriched() -> ad.AnnData:
    """Type A (6 cells) on topic_2, type B (3 cells) on topic_0, type C (1 cell) uniform."""
    a = np.tile([0.1, 0.1, 0.7, 0.1], (6, 1))
    b = np.tile([0.5, 0.2, 0.1, 0.2], (3, 1))
    c = np.full((1, K), 0.25)
    return make_adata(np.vstack([a, b, c]), ["A"] * 6 + ["B"] * 3 + ["C"])


def topic_gene_frame(top: list[list[str]], genes: list[str]) -> pd.DataFrame:
    """A topics × genes frame whose rows rank the given genes first, in order."""
    values = np.zeros((len(top), len(genes)))
    for k, wanted in enumerate(top):
        for rank, gene in enumerate(wanted):
            values[k, genes.index(gene)] = len(wanted) - rank
    return pd.DataFrame(values, index=[f"t{k}" for k in range(len(top))], columns=genes)


def test_specificity_exact_ratios(enriched):
    table = tl.topic_specificity(enriched, "cell_type")
    assert list(table.index) == ["A", "B", "C"]
    assert table.index.name == "cell_type"
    assert list(table.columns) == ["n_cells", "topic", "theta_in", "theta_out", "ratio"]
    assert list(table["n_cells"]) == [6, 3, 1]
    assert list(table["topic"]) == ["topic_2", "topic_0", "topic_1"]
    # A vs. the 4 other cells: topic_2 out = (3 * 0.1 + 0.25) / 4.
    assert table.loc["A", "theta_in"] == pytest.approx(0.7)
    assert table.loc["A", "theta_out"] == pytest.approx(0.1375)
    assert table.loc["A", "ratio"] == pytest.approx(0.7 / 0.1375)
    # B vs. the 7 other cells: topic_0 out = (6 * 0.1 + 0.25) / 7.
    assert table.loc["B", "ratio"] == pytest.approx(0.5 / (0.85 / 7))
    # C (uniform): topic_1 and topic_3 tie at 0.25 / (1.2 / 9); the first one wins.
    assert table.loc["C", "ratio"] == pytest.approx(0.25 / (1.2 / 9))


def test_specificity_min_cells_keeps_small_types_as_others(enriched):
    table = tl.topic_specificity(enriched, "cell_type", min_cells=3)
    assert list(table.index) == ["A", "B"]
    assert table.loc["A", "theta_out"] == pytest.approx(0.1375)


def test_uniform_theta_gives_ratio_one():
    adata = make_adata(np.full((12, K), 1 / K), ["x", "y", "z"] * 4)
    table = tl.topic_specificity(adata, "cell_type")
    np.testing.assert_allclose(table["ratio"], 1.0, rtol=1e-6)
    assert tl.mean_max_theta(adata.obsm["X_topics"]) == pytest.approx(1 / K)
    summary = tl.topic_summary(adata, "cell_type", min_cells_ratio=4)
    assert summary["min_ratio"] == pytest.approx(1.0, rel=1e-6)
    assert summary["n_types_ratio"] == 3
    assert summary["n_types_ratio_ge_10"] == 0
    assert np.isnan(summary["diversity"])
    assert np.isnan(summary["marker_hits"])


def test_exclusive_topics_give_huge_ratios_and_peaked_theta():
    theta = np.repeat(np.eye(2, 3), 5, axis=0)
    adata = make_adata(theta, ["a"] * 5 + ["b"] * 5)
    table = tl.topic_specificity(adata, "cell_type")
    assert list(table["topic"]) == ["topic_0", "topic_1"]
    assert (table["theta_out"] == 0).all()
    assert (table["ratio"] > 1e10).all()
    assert tl.mean_max_theta(theta) == 1.0


def test_mean_max_theta_dataframe():
    theta = pd.DataFrame([[0.6, 0.4], [0.1, 0.9]])
    assert tl.mean_max_theta(theta) == pytest.approx(0.75)


def test_topic_diversity():
    genes = [f"g{j}" for j in range(12)]
    same = pd.DataFrame(np.tile(np.arange(12.0), (3, 1)), columns=genes)
    assert tl.topic_diversity(same, n_top=4) == pytest.approx(4 / (3 * 4))
    disjoint = np.kron(np.eye(3), np.ones((1, 4)))  # topic k weighs genes 4k..4k+3
    assert tl.topic_diversity(disjoint, n_top=4) == 1.0
    half = topic_gene_frame([["g0", "g1"], ["g1", "g2"]], genes)
    assert tl.topic_diversity(half, n_top=2) == pytest.approx(3 / 4)
    with pytest.raises(ValueError, match="n_top=13 exceeds"):
        tl.topic_diversity(same, n_top=13)
    with pytest.raises(ValueError, match="n_top must be at least 1"):
        tl.topic_diversity(same, n_top=0)


def test_marker_hits_on_constructed_topic_gene(enriched):
    genes = ["Ins", "Gcg", "Sst", "Krt19", "Ttr", "Actb", "Gapdh", "Mt1"]
    topic_gene = topic_gene_frame(
        [["Gcg", "Ttr"], ["Actb", "Gapdh"], ["Ins", "Actb"], ["Mt1", "Gapdh"]], genes
    )
    markers = {"A": ["Ins", "Iapp"], "B": ["Sst", "Krt19"], "D": ["Ppy"]}
    table = tl.topic_specificity(
        enriched, "cell_type", topic_gene=topic_gene, markers=markers, n_top=2
    )
    assert list(table["topic"]) == ["t2", "t0", "t1"]
    assert table.loc["A", "top_genes"] == ["Ins", "Actb"]
    assert table.loc["B", "top_genes"] == ["Gcg", "Ttr"]
    assert table.loc["A", "n_markers_in_top"] == 1
    assert table.loc["A", "marker_hit"]
    assert table.loc["B", "n_markers_in_top"] == 0
    assert not table.loc["B", "marker_hit"]
    assert pd.isna(table.loc["C", "n_markers_in_top"])
    assert pd.isna(table.loc["C", "marker_hit"])

    summary = tl.topic_summary(
        enriched,
        "cell_type",
        topic_gene=topic_gene,
        markers=markers,
        n_top=2,
        min_cells_ratio=3,
        min_cells_marker=2,
        n_top_diversity=2,
    )
    assert summary["marker_hits"] == 1
    assert summary["n_marker_types"] == 2
    assert summary["n_types_ratio"] == 2
    assert summary["min_ratio"] == pytest.approx(0.5 / (0.85 / 7))
    assert summary["diversity"] == pytest.approx(6 / 8)  # Actb and Gapdh twice
    assert summary["mean_max_theta"] == pytest.approx((6 * 0.7 + 3 * 0.5 + 0.25) / 10)
    strict = tl.topic_summary(
        enriched, "cell_type", topic_gene=topic_gene, markers=markers, n_top=2, n_top_diversity=2
    )
    assert strict["n_marker_types"] == 0
    assert strict["n_types_ratio"] == 0
    assert np.isnan(strict["min_ratio"])


def test_markers_absent_from_genes_are_logged(enriched, caplog):
    topic_gene = pd.DataFrame(np.eye(K, 6), columns=[f"g{j}" for j in range(6)])
    with caplog.at_level(logging.WARNING, logger="scetm_mnn.tl._topics"):
        table = tl.topic_specificity(
            enriched, "cell_type", topic_gene=topic_gene, markers={"A": ["INS"]}, n_top=2
        )
    assert table.loc["A", "n_markers_in_top"] == 0
    assert "None of the 1 markers of 'A'" in caplog.text


def test_errors(enriched):
    with pytest.raises(KeyError, match=r"theta_key='X_nope'.*'X_topics'"):
        tl.topic_specificity(enriched, "cell_type", theta_key="X_nope")
    with pytest.raises(KeyError, match="label_key='tissue'"):
        tl.topic_specificity(enriched, "tissue")
    with pytest.raises(ValueError, match="pass `topic_gene=`"):
        tl.topic_specificity(enriched, "cell_type", markers={"A": ["x"]})
    with pytest.raises(ValueError, match="2 rows but θ has 4 topics"):
        tl.topic_specificity(enriched, "cell_type", topic_gene=np.ones((2, 5)))
    with pytest.raises(ValueError, match="min_cells"):
        tl.topic_specificity(enriched, "cell_type", min_cells=0)
    one_type = make_adata(np.full((3, K), 1 / K), ["A"] * 3)
    with pytest.raises(ValueError, match="at least two labels"):
        tl.topic_specificity(one_type, "cell_type")


@pytest.mark.parametrize(
    ("theta", "match"),
    [
        (np.full((4, K), 0.5), "must sum to 1.*get_topic_proportions"),
        (np.array([[1.5, -0.5]] * 3), "negative values"),
        (np.array([[np.nan, 1.0]] * 3), "NaN or infinite"),
    ],
)
def test_bad_theta(theta, match):
    adata = make_adata(theta, ["a", "b", "a", "b"][: len(theta)])
    with pytest.raises(ValueError, match=match):
        tl.topic_specificity(adata, "cell_type")
    with pytest.raises(ValueError, match=match):
        tl.mean_max_theta(theta)


def test_theta_must_be_2d():
    with pytest.raises(ValueError, match="2-D"):
        tl.mean_max_theta(np.full(4, 0.25))


def test_pancreas_markers_errors(tmp_path, monkeypatch):
    monkeypatch.delenv("SCETM_MNN_DATA", raising=False)
    with pytest.raises(FileNotFoundError, match="SCETM_MNN_DATA"):
        datasets.pancreas_markers("human")
    with pytest.raises(FileNotFoundError, match=r"pancreas_markers\.tsv not found"):
        datasets.pancreas_markers("human", data_dir=tmp_path)
    (tmp_path / "baron_pancreas").mkdir()
    path = tmp_path / "baron_pancreas" / "pancreas_markers.tsv"
    path.write_text("species\tcell_type\tmarkers\nhuman\tbeta\tINS IAPP\nhuman\tbeta\tINS MAFA\n")
    assert datasets.pancreas_markers("human", data_dir=tmp_path) == {
        "beta": ["INS", "IAPP", "MAFA"]
    }
    with pytest.raises(ValueError, match=r"species='fish'.*\['human'\]"):
        datasets.pancreas_markers("fish", data_dir=tmp_path)
    path.write_text("species\tgenes\nhuman\tINS\n")
    with pytest.raises(ValueError, match="lacks the columns"):
        datasets.pancreas_markers("human", data_dir=tmp_path)


@pytest.mark.parametrize("species", ["human", "mouse"])
def test_pancreas_markers_match_baron_labels(data_dir, species, request):
    markers = datasets.pancreas_markers(species, data_dir=data_dir)
    assert len(markers) >= 8
    assert all(len(genes) >= 3 for genes in markers.values())
    adata = request.getfixturevalue(f"baron_{species}")
    labels = set(adata.obs["cell_type"].astype(str))
    assert set(markers) <= labels, set(markers) - labels
    assert "activated_stellate" in markers or "quiescent_stellate" in markers
    genes = set(adata.var_names)
    for cell_type, wanted in markers.items():
        assert set(wanted) & genes, f"no marker of {cell_type} in the {species} genes"
    beta = "INS" if species == "human" else "Ins1"
    assert beta in markers["beta"]


def test_enrichment_one_row_per_topic(enriched):
    genes = ["g0", "g1", "g2", "g3"]
    topic_gene = topic_gene_frame([["g0"], ["g1"], ["g2", "g3"], ["g3"]], genes)
    table = tl.topic_enrichment(enriched, "cell_type", topic_gene=topic_gene, n_top=2)
    assert list(table.index) == ["t0", "t1", "t2", "t3"] and table.index.name == "topic"
    assert list(table.columns) == [
        "mean_theta", "label", "n_cells", "theta_in", "theta_out", "ratio", "top_genes"
    ]  # fmt: skip
    assert list(table["label"]) == ["B", "C", "A", "C"]
    # The same ratios as the per-type table where a type's best topic is the topic's best.
    by_type = tl.topic_specificity(enriched, "cell_type")
    assert table.loc["t2", "ratio"] == pytest.approx(by_type.loc["A", "ratio"])
    assert table.loc["t0", "ratio"] == pytest.approx(by_type.loc["B", "ratio"])
    assert table.loc["t2", "top_genes"] == ["g2", "g3"]
    np.testing.assert_allclose(table["mean_theta"].sum(), 1.0, rtol=1e-6)
    # The single C cell cannot win with min_cells=2: topic_1 goes to B (ratio 1.65).
    assert tl.topic_enrichment(enriched, "cell_type", min_cells=2).loc["topic_1", "label"] == "B"
    with pytest.raises(ValueError, match="min_cells=7"):
        tl.topic_enrichment(enriched, "cell_type", min_cells=7)
