"""tl.topic_stability: Hungarian matching of topics across seeds, consensus, refusals."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scvi

from scetm_mnn import tl
from scetm_mnn.model import BatchCorrectedSCETM


@pytest.fixture
def beta():
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        rng.normal(0, 3, size=(4, 30)),
        index=[f"topic_{k}" for k in range(4)],
        columns=[f"g{j}" for j in range(30)],
    )


def test_identical_runs_give_cosine_one(sim_topic_model):
    result = tl.topic_stability([sim_topic_model, sim_topic_model], consensus=True)
    assert np.allclose(result.table["reproducibility"], 1.0)
    assert result.table["stable"].all()
    assert (result.matches["run_1"] == result.matches.index).all()
    beta = sim_topic_model.get_topic_gene_matrix()
    expected = np.exp(beta) / np.exp(beta).sum(axis=1).to_numpy()[:, None]
    assert np.allclose(result.consensus_beta.to_numpy(), expected.to_numpy())
    assert np.allclose(result.consensus_theta, sim_topic_model.get_topic_proportions())


def test_permuted_topics_are_matched_back(beta):
    shuffled = beta.iloc[[2, 0, 3, 1]].set_axis([f"t{k}" for k in range(4)])
    result = tl.topic_stability([beta, shuffled])
    assert result.matches["run_1"].tolist() == ["t1", "t3", "t0", "t2"]
    assert np.allclose(result.cosine["run_1"], 1.0)


def test_missing_and_changed_topics(beta):
    missing = beta.iloc[:3]  # topic_3 has no partner
    changed = beta.copy()
    changed.iloc[2] = np.random.default_rng(1).normal(0, 3, size=30)  # topic_2 is another
    result = tl.topic_stability([beta, missing, changed], min_cosine=0.7, min_presence=0.8)
    table = result.table
    assert result.matches.loc["topic_3", "run_1"] == ""
    assert np.isnan(result.cosine.loc["topic_3", "run_1"])
    assert table.loc["topic_3", "present_fraction"] == pytest.approx(2 / 3)
    assert table.loc["topic_3", "reproducibility"] == pytest.approx(0.5)  # 0 and 1
    assert table.loc["topic_2", "present_fraction"] == pytest.approx(2 / 3)
    assert table.loc["topic_2", "reproducibility"] < 0.7
    assert table["stable"].tolist() == [True, True, False, False]


def test_near_uniform_topics_do_not_match_trivially():
    rng = np.random.default_rng(0)
    flat = [pd.DataFrame(rng.normal(0, 1e-3, size=(3, 50))) for _ in range(2)]
    assert tl.topic_stability(flat).table["reproducibility"].max() < 0.8


def test_runs_with_other_genes_are_refused(beta):
    with pytest.raises(ValueError, match="Run 1 has other genes than run 0"):
        tl.topic_stability([beta, beta.rename(columns={"g0": "X"})])
    reordered = beta[beta.columns[::-1]]  # the same genes in another order are aligned
    assert np.allclose(tl.topic_stability([beta, reordered]).table["reproducibility"], 1)


def test_bad_input(beta, sim_topic_model):
    with pytest.raises(ValueError, match="at least two runs"):
        tl.topic_stability([beta])
    with pytest.raises(ValueError, match="needs model_class"):
        tl.topic_stability(sim_topic_model.adata, n_seeds=2)
    with pytest.raises(ValueError, match="min_cosine must be in"):
        tl.topic_stability([beta, beta], min_cosine=2)
    with pytest.raises(ValueError, match="key_added needs models"):
        tl.topic_stability([beta, beta], key_added="stability")
    with pytest.raises(TypeError, match="topic_stability takes"):
        tl.topic_stability(3)


def test_retrains_a_model_over_seeds_and_writes_the_record(sim_topic_model):
    adata = sim_topic_model.adata
    scvi.settings.seed = 7
    state = np.random.get_state()[1][:5].copy()  # noqa: NPY002
    try:
        result = tl.topic_stability(
            sim_topic_model, n_seeds=2, train_kwargs={"max_epochs": 5}, key_added="stab"
        )
        record = adata.uns["stab"]
    finally:
        adata.uns.pop("stab", None)
    assert scvi.settings.seed == 7
    assert (np.random.get_state()[1][:5] == state).all()  # noqa: NPY002
    assert list(result.cosine.columns) == ["run_0", "run_1"]
    assert record["n_runs"] == 2 and set(record["stable"]) == set(sim_topic_model.topic_names)
    # a 5-epoch retrain finds other topics than the 40-epoch reference: not all reproduce
    assert result.table["reproducibility"].min() < 1.0


def test_trains_on_an_anndata_with_a_model_class(sim_topic_model):
    adata = sim_topic_model.adata
    kwargs = {"n_topics": 4, "n_emb": 8}
    result = tl.topic_stability(
        adata, n_seeds=2, model_class=BatchCorrectedSCETM, model_kwargs=kwargs,
        train_kwargs={"max_epochs": 2},
    )  # fmt: skip
    assert result.cosine.shape[1] == 2 and len(result.table) <= 4
