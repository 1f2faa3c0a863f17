import math

import numpy as np
import pytest
import torch
from scipy import sparse

from scetm_mnn.module import ETMModule
from scetm_mnn.train import ETMTrainingPlan, MinibatchSource, PreloadedDataSplitter, linear_warmup


def test_linear_warmup_schedule():
    assert linear_warmup(0, 10, 0.0, 1e-7) == 0.0
    assert linear_warmup(5, 10, 0.0, 1e-7) == pytest.approx(5e-8)
    assert linear_warmup(10, 10, 0.0, 1e-7) == 1e-7
    assert linear_warmup(500, 10, 0.0, 1e-7) == 1e-7
    assert linear_warmup(0, 0, 0.0, 1e-7) == 1e-7


def test_adam_is_fused_on_cpu_and_plain_where_torch_has_no_fused_kernel():
    from scetm_mnn._optim import fused_adam

    plan = ETMTrainingPlan(ETMModule(10, n_topics=2, n_emb=3), optimizer="AdamW")
    optimizer = plan.configure_optimizers()["optimizer"]
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["fused"]
    assert optimizer.defaults["lr"] == plan.lr and optimizer.defaults["eps"] == plan.eps
    on_meta = torch.nn.Parameter(torch.zeros(3, device="meta"))
    assert not fused_adam([on_meta], lr=1e-3).defaults["fused"]


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
    monkeypatch.setattr("scetm_mnn._rows.DENSE_PRELOAD_BYTES", preload_bytes)
    source = _source(10)
    assert source.x.is_sparse == (preload_bytes == 0)
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
    rows, pos = source.with_partners(
        np.array([0, 1, 2, 3]), np.random.default_rng(0), source.pairs
    )
    assert set(rows.tolist()) == {0, 1, 2, 3, 7, 9}
    got = {tuple(sorted((rows[i], rows[j]))) for i, j in pos}
    assert got == {(0, 7), (2, 9)}
    batch = next(source.iterate(np.array([0, 1, 2, 3]), 4, np.random.default_rng(0), source.pairs))
    assert batch["mnn_pairs"].shape == (2, 2)
    assert batch["X"].shape[0] == 6
    assert batch["anchor"].tolist() == [True] * 4 + [False] * 2


def test_split_pairs_keep_only_pairs_inside_the_split():
    pairs = sparse.coo_matrix(([1, 1, 1, 1], ([0, 7, 2, 9], [7, 0, 9, 2])), shape=(10, 10))
    source = _source(10, pairs.tocsr())
    inside = source.split_pairs(np.array([0, 1, 2, 3, 7]))
    assert {tuple(x) for x in np.argwhere(inside.toarray())} == {(0, 7), (7, 0)}


# ------------------------------------------------- the splitter with MNN partners
def _indexed(n=600, seed=0):
    """Counts whose first gene encodes each cell's index, with dense random MNN pairs."""
    from scetm_mnn.datasets import simulate
    from scetm_mnn.model import BatchCorrectedSCETM

    adata = simulate(n_cells=n, n_genes=30, n_batches=2, n_cell_types=3, random_state=seed)
    x = adata.X.toarray()
    x[:, 0] = np.arange(n)
    adata.X = sparse.csr_matrix(x)
    batch = adata.obs["batch"].cat.codes.to_numpy()
    rng = np.random.default_rng(seed)
    a = rng.choice(np.flatnonzero(batch == 0), 2000)
    b = rng.choice(np.flatnonzero(batch == 1), 2000)
    pairs = sparse.coo_matrix((np.ones(4000), (np.r_[a, b], np.r_[b, a])), shape=(n, n)).tocsr()
    pairs.data[:] = 1.0
    adata.obsp["pairs"] = pairs
    BatchCorrectedSCETM.setup_anndata(adata, batch_key="batch", mnn_pairs_key="pairs")
    model = BatchCorrectedSCETM(adata, n_topics=3, n_emb=4)
    return adata, model


def test_validation_cells_never_enter_training_minibatches():
    adata, model = _indexed()
    splitter = PreloadedDataSplitter(
        model.adata_manager, train_size=0.7, mnn_pairs=adata.obsp["pairs"], batch_size=64
    )
    val = set(splitter.val_idx.tolist())
    assert len(val) == 180
    served = set()
    for _ in range(3):
        for batch in splitter.train_dataloader():
            served |= set(batch["X"][:, 0].long().tolist())
    assert served == set(splitter.train_idx.tolist())  # partners included, never a val cell
    for batch in splitter.val_dataloader():
        assert set(batch["X"][:, 0].long().tolist()) <= val
        assert "mnn_pairs" not in batch


def test_every_training_cell_weighs_the_same_in_the_likelihood():
    adata, model = _indexed()
    splitter = PreloadedDataSplitter(model.adata_manager, mnn_pairs=adata.obsp["pairs"])
    assert splitter.batch_size == 256  # the same default as train()
    counts = np.zeros(adata.n_obs, dtype=int)
    encoded = 0
    for batch in splitter.train_dataloader():
        counts[batch["X"][batch["anchor"], 0].long().numpy()] += 1
        encoded += batch["X"].shape[0]
        assert int(batch["anchor"].sum()) <= 256
    assert (counts == 1).all()  # each cell sampled once per epoch, however many pairs it has
    assert encoded > adata.n_obs  # partners were drawn in, for the MNN term only


def test_validation_size_alone_sets_the_training_fraction():
    _, model = _indexed()
    splitter = PreloadedDataSplitter(model.adata_manager, validation_size=0.1)
    assert (splitter.n_train, splitter.n_val) == (540, 60)
    with pytest.raises(ValueError, match="must not exceed 1"):
        PreloadedDataSplitter(model.adata_manager, train_size=0.95, validation_size=0.1)


def test_split_follows_the_seed():
    _, model = _indexed()
    a = PreloadedDataSplitter(model.adata_manager, train_size=0.5, seed=1).train_idx
    b = PreloadedDataSplitter(model.adata_manager, train_size=0.5, seed=1).train_idx
    c = PreloadedDataSplitter(model.adata_manager, train_size=0.5, seed=2).train_idx
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_reduce_lr_on_plateau_says_the_decay_is_dropped():
    module = ETMModule(10, n_topics=2, n_emb=3)
    with pytest.warns(UserWarning, match="lr_decay"):
        ETMTrainingPlan(module, reduce_lr_on_plateau=True)


def test_bf16_mixed_training_clips_gradients_with_the_fused_adam(sim_adata, monkeypatch):
    """Lightning refuses to clip for a fused optimizer under any mixed precision; bf16
    scales no gradient, so the plan clips them itself (Lightning-AI/pytorch-lightning#21435).
    """
    from scetm_mnn.model import BatchCorrectedSCETM

    clipped = []
    clip = torch.nn.utils.clip_grad_norm_

    def spy(parameters, max_norm, *args, **kwargs):
        clipped.append(max_norm)
        return clip(parameters, max_norm, *args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    adata = sim_adata.copy()
    BatchCorrectedSCETM.setup_anndata(adata, batch_key="batch")
    model = BatchCorrectedSCETM(adata, n_topics=4)
    model.train(
        max_epochs=2, batch_size=200, accelerator="cpu", precision="bf16-mixed",
        validation_size=0.1, enable_progress_bar=False,
    )  # fmt: skip
    assert clipped and set(clipped) == {50.0}
    assert model.trainer.optimizers[0].defaults["fused"]
    assert np.isfinite(model.history["elbo_validation"].to_numpy()).all()


@pytest.mark.parametrize(
    ("native", "kwargs", "hinted"),
    [
        (True, {"accelerator": "cpu"}, True),
        (True, {"accelerator": "auto"}, True),  # no GPU here
        (True, {"accelerator": "cpu", "precision": "32-true"}, False),  # chosen: no hint
        (True, {"accelerator": "gpu"}, False),
        (False, {"accelerator": "cpu"}, False),  # emulated bf16 gains nothing
    ],
)
def test_float32_training_on_a_native_bf16_cpu_hints_at_bf16(
    monkeypatch, caplog, native, kwargs, hinted
):
    from scetm_mnn.train import _precision

    monkeypatch.setattr(_precision, "native_bf16", lambda: native)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with caplog.at_level("INFO", logger="scetm_mnn.train._precision"):
        _precision.hint_bf16(kwargs)
    assert ("precision='bf16-mixed'" in caplog.text) is hinted


def test_native_bf16_is_false_on_a_build_without_onednn(monkeypatch):
    from scetm_mnn.train import native_bf16

    assert isinstance(native_bf16(), bool)

    def missing():
        raise RuntimeError("no oneDNN in this build")

    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", missing)
    assert native_bf16() is False
