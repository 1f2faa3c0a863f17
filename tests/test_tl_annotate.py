"""tl.annotate_topics, tl.topic_labels and the GMT files: statistics, recovery, bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from scetm_mnn import tl


def _programmes(adata) -> dict[str, list[str]]:
    marker_of = adata.var["marker_of"].astype(str)
    return {t: list(marker_of.index[marker_of == t]) for t in sorted(set(marker_of) - {""})}


@pytest.fixture
def beta():
    genes = [f"g{j}" for j in range(20)]
    values = np.zeros((2, 20))
    values[0, :5] = np.arange(5, 0, -1)  # topic_0's top 5: g0..g4
    values[1, 10:15] = 1.0  # topic_1's top 5: g10..g14
    return pd.DataFrame(values, index=["topic_0", "topic_1"], columns=genes)


def test_statistics_match_fisher_and_bh(beta):
    sets = {"a": ["g0", "g1", "g2", "g10"], "b": ["g3", "g11", "g12", "g13", "g19"]}
    table = tl.annotate_topics(beta, sets, n_top=5)
    row = table.set_index(["topic", "gene_set"]).loc[("topic_0", "a")]
    assert row["overlap"] == 3 and row["overlap_genes"] == ["g0", "g1", "g2"]
    # one-sided Fisher exact test of the 2 × 2 table: top 5 of 20 genes vs a set of 4
    _, fisher = stats.fisher_exact([[3, 2], [1, 14]], alternative="greater")
    assert row["pvalue"] == pytest.approx(fisher)
    assert row["expected"] == pytest.approx(4 * 5 / 20) and row["enrichment"] == pytest.approx(3)
    assert np.allclose(table["fdr"], stats.false_discovery_control(table["pvalue"], method="bh"))
    assert list(table["topic"]) == ["topic_0", "topic_0", "topic_1", "topic_1"]
    assert table.groupby("topic")["pvalue"].is_monotonic_increasing.all()


def test_recovers_each_simulated_programme(sim_topic_model):
    programmes = _programmes(sim_topic_model.adata)
    table = tl.annotate_topics(sim_topic_model, programmes, n_top=20)
    best = table.sort_values("pvalue").drop_duplicates("gene_set").set_index("gene_set")
    assert set(best.index) == set(programmes)
    assert (best["fdr"] < 0.01).all()
    assert best["topic"].nunique() == len(programmes)  # one topic per programme
    labels = tl.topic_labels(table)
    for name, row in best.iterrows():
        assert f"· {name} (FDR" in labels[row["topic"]]


def test_labels_written_for_the_report_and_the_model(sim_topic_model):
    adata = sim_topic_model.adata
    try:
        table = tl.annotate_topics(
            sim_topic_model, _programmes(adata), n_top=20, key_added="topic_annotation"
        )
        record = adata.uns["topic_annotation"]
        assert record["labels"] == tl.topic_labels(table)
        assert set(record["labels"]) == set(sim_topic_model.topic_names)
        assert sim_topic_model.topic_labels == [
            record["labels"][t] for t in sim_topic_model.topic_names
        ]
    finally:
        adata.uns.pop("topic_annotation", None)
    assert sim_topic_model.topic_labels == sim_topic_model.topic_names


def test_anndata_source_and_key_added_on_a_dataframe(beta):
    import anndata as ad

    adata = ad.AnnData(np.zeros((3, 20)), var=pd.DataFrame(index=beta.columns))
    adata.varm["topic_gene"] = beta.T.to_numpy()
    table = tl.annotate_topics(adata, {"a": ["g0", "g1"]}, n_top=5, key_added="ann")
    assert table.set_index("topic").loc["topic_0", "overlap"] == 2
    assert adata.uns["ann"]["gene_set"]["topic_0"] == "a"
    with pytest.raises(ValueError, match="key_added needs a model or an AnnData"):
        tl.annotate_topics(beta, {"a": ["g0"]}, key_added="ann")
    with pytest.raises(KeyError, match="topic_gene_key='other'"):
        tl.annotate_topics(adata, {"a": ["g0"]}, topic_gene_key="other")


def test_unknown_genes_warn_and_are_dropped(beta):
    with pytest.warns(UserWarning, match="2 of the 4 genes of the gene sets are not among"):
        table = tl.annotate_topics(beta, {"a": ["g0", "g1", "NOPE", "ALSO"]}, n_top=5)
    assert table["set_size"].unique().tolist() == [2]


def test_empty_and_unmatched_sets_are_skipped_with_a_warning(beta):
    with pytest.warns(UserWarning, match="1 gene sets are empty and are skipped: 'e'"):
        table = tl.annotate_topics(beta, {"a": ["g0"], "e": []}, n_top=5)
    assert set(table["gene_set"]) == {"a"}
    with pytest.warns(UserWarning, match="have none of their genes"):
        tl.annotate_topics(beta, {"a": ["g0"], "x": ["NOPE"]}, n_top=5)
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="No gene set has a gene"):
        tl.annotate_topics(beta, {"x": ["NOPE"]}, n_top=5)


def test_bad_arguments(beta):
    with pytest.raises(ValueError, match="n_top must be between 1 and the 20 genes"):
        tl.annotate_topics(beta, {"a": ["g0"]}, n_top=21)
    with pytest.raises(TypeError, match="is a string"):
        tl.annotate_topics(beta, {"a": "g0"}, n_top=5)
    with pytest.raises(TypeError, match="annotate_topics takes"):
        tl.annotate_topics(np.zeros((2, 3)), {"a": ["g0"]})


def test_gmt_round_trip_and_bad_files(tmp_path, beta):
    sets = {"beta": ["INS", "IAPP"], "alpha": ["GCG"]}
    path = tmp_path / "cells.gmt"
    tl.write_gmt(sets, path)
    assert tl.read_gmt(path) == sets
    (tmp_path / "dup.gmt").write_text("a\t\tg1\na\t\tg2\n")
    with pytest.raises(ValueError, match="'a' is used twice"):
        tl.read_gmt(tmp_path / "dup.gmt")
    (tmp_path / "table.csv").write_text("name,genes\nbeta,INS\n")
    with pytest.raises(ValueError, match="is not a GMT file: line 1 has no tab"):
        tl.read_gmt(tmp_path / "table.csv")
    (tmp_path / "binary.gmt").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    with pytest.raises(ValueError, match="not UTF-8 text"):
        tl.read_gmt(tmp_path / "binary.gmt")
    (tmp_path / "blank.gmt").write_text("\n\n")
    with pytest.raises(ValueError, match="holds no gene set"):
        tl.read_gmt(tmp_path / "blank.gmt")
    with pytest.raises(FileNotFoundError):
        tl.read_gmt(tmp_path / "missing.gmt")
    (tmp_path / "empty_set.gmt").write_text("a\tdesc\tg0\tg1\nb\tno genes\n")
    with pytest.warns(UserWarning, match="empty and are skipped: 'b'"):
        table = tl.annotate_topics(beta, tmp_path / "empty_set.gmt", n_top=5)
    assert set(table["gene_set"]) == {"a"}
    with pytest.raises(ValueError, match="holds a tab"):
        tl.write_gmt({"a\tb": ["g"]}, tmp_path / "bad.gmt")


def test_speed_of_many_sets():
    import time

    rng = np.random.default_rng(0)
    genes = [f"g{i}" for i in range(2000)]
    beta = pd.DataFrame(rng.normal(size=(50, 2000)), columns=genes)
    sets = {f"s{j}": list(rng.choice(genes, size=50, replace=False)) for j in range(1000)}
    tic = time.perf_counter()
    table = tl.annotate_topics(beta, sets)
    assert time.perf_counter() - tic < 5.0
    assert table.shape[0] == 50 * 1000
