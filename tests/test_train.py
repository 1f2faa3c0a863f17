import math

import numpy as np
import pytest
import torch
from scipy import sparse

from scetm_mnn.module import ETMModule
from scetm_mnn.train import ETMTrainingPlan, MinibatchSource, linear_warmup


def test_linear_warmup_schedule():
    assert linear_warmup(0, 10, 0.0, 1e-7) == 0.0
    assert linear_warmup(5, 10, 0.0, 1e-7) == pytest.approx(5e-8)
    assert linear_warmup(10, 10, 0.0, 1e-7) == 1e-7
    assert linear_warmup(500, 10, 0.0, 1e-7) == 1e-7
    assert linear_warmup(0, 0, 0.0, 1e-7) == 1e-7


def test_plan_defaults_follow_scetm():
    plan = ETMTrainingPlan(ETMModule(10, n_topics=2, n_emb=3))
    assert plan.lr == 5e-3 and plan.eps == 1e-8 and plan.weight_decay == 0.0
    assert plan.max_kl_weight == 1e-7 and plan.kl_warmup_fraction == pytest.approx(1 / 3)
    assert plan.lr_decay == 6e-5 and plan.gradient_clip_norm == 50.0
    assert float(plan.kl_weight) == 0.0  # before training starts
    config = plan.configure_optimizers()
    assert isinstance(config["optimizer"], torch.optim.Adam)
    scheduler = config["lr_scheduler"]["scheduler"]
    for _ in range(100):
        config["optimizer"].step()
        scheduler.step()
    assert config["optimizer"].param_groups[0]["lr"] == pytest.approx(5e-3 * math.exp(-6e-3))


def test_plan_rejects_bad_settings():
    module = ETMModule(10, n_topics=2, n_emb=3)
    with pytest.raises(ValueError, match="kl_warmup_fraction"):
        ETMTrainingPlan(module, kl_warmup_fraction=2.0)
    with pytest.raises(ValueError, match="lr_decay"):
        ETMTrainingPlan(module, lr_decay=-1.0)
    assert "lr_scheduler" not in ETMTrainingPlan(module, lr_decay=0).configure_optimizers()


def _matrix(n=10):
    return sparse.random(n, 6, density=0.5, format="csr", random_state=0, dtype=np.float32)


def _source(n=10, pairs=None):
    return MinibatchSource(_matrix(n), np.arange(n) % 2, mnn_pairs=pairs)


@pytest.mark.parametrize("preload_bytes", [0, 2**20])
def test_minibatches_cover_every_cell_once(monkeypatch, preload_bytes):
    monkeypatch.setattr("scetm_mnn.train._data.DENSE_PRELOAD_BYTES", preload_bytes)
    source = _source(10)
    assert sparse.issparse(source.x) == (preload_bytes == 0)
    rng = np.random.default_rng(0)
    rows = [b["X"] for b in source.iterate(np.arange(10), 4, rng)]
    assert [r.shape[0] for r in rows] == [4, 4, 2]
    stacked = torch.cat(rows)
    dense = torch.from_numpy(_matrix(10).toarray())
    # every row of the data appears exactly once
    matches = (stacked[:, None, :] == dense[None]).all(-1)
    assert matches.any(0).all()  # every cell of the data was served
    assert stacked.shape[0] == 10


def test_singleton_last_batch_is_skipped_in_training_only():
    source = _source(9)
    rng = np.random.default_rng(0)
    assert [b["X"].shape[0] for b in source.iterate(np.arange(9), 4, rng)] == [4, 4]
    assert [b["X"].shape[0] for b in source.iterate(np.arange(9), 4)] == [4, 4, 1]


def test_partners_join_the_minibatch():
    pairs = sparse.coo_matrix(([1, 1, 1, 1], ([0, 7, 2, 9], [7, 0, 9, 2])), shape=(10, 10))
    source = _source(10, pairs.tocsr())
    rows, pos = source.with_partners(np.array([0, 1, 2, 3]), np.random.default_rng(0))
    assert set(rows.tolist()) == {0, 1, 2, 3, 7, 9}
    got = {tuple(sorted((rows[i], rows[j]))) for i, j in pos}
    assert got == {(0, 7), (2, 9)}
    batch = next(source.iterate(np.array([0, 1, 2, 3]), 4, np.random.default_rng(0), True))
    assert batch["mnn_pairs"].shape == (2, 2)
    assert batch["X"].shape[0] == 6
