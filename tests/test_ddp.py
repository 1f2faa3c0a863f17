"""Data-parallel training: rank shards, a 2-process DDP run over gloo, the device data path."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy import sparse

from _ranks import run_two_ranks
from scetm_mnn._rows import Rows, ShiftedRows
from scetm_mnn.train import HistoryLogger, MinibatchSource, PreloadedDataSplitter, epoch_order
from scetm_mnn.train._device import DeviceRows, gather_csr_rows

WORKER = Path(__file__).with_name("ddp_worker.py")
pytestmark = pytest.mark.usefixtures("one_thread")  # as each rank runs; restored afterwards


# ------------------------------------------------------------------ shards
@pytest.mark.parametrize("world_size", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("n", [1, 5, 13, 100, 257])
def test_shards_are_disjoint_and_cover_the_training_cells(world_size, n):
    indices = np.arange(1000, 1000 + n)
    shards = [epoch_order(indices, 3, 2, rank, world_size) for rank in range(world_size)]
    assert len({len(s) for s in shards}) == 1  # equal lengths: no rank waits for another
    served = np.concatenate(shards)
    assert set(served.tolist()) == set(indices.tolist())
    padding = served.size - n
    assert 0 <= padding < world_size
    # disjoint up to the padding, which repeats the first cells of the shuffle
    assert len(served) - len(set(served.tolist())) == padding


def test_shuffle_follows_seed_and_epoch_and_is_shared_by_ranks():
    idx = np.arange(50)
    np.testing.assert_array_equal(epoch_order(idx, 0, 1), epoch_order(idx, 0, 1))
    assert not np.array_equal(epoch_order(idx, 0, 1), epoch_order(idx, 0, 2))
    assert not np.array_equal(epoch_order(idx, 0, 1), epoch_order(idx, 1, 1))
    one = epoch_order(idx, 0, 1)
    two = [epoch_order(idx, 0, 1, rank, 2) for rank in (0, 1)]
    np.testing.assert_array_equal(one[0::2], two[0])
    np.testing.assert_array_equal(one[1::2], two[1])
    with pytest.raises(ValueError, match="rank < world_size"):
        epoch_order(idx, 0, 0, rank=2, world_size=2)


def _splitter(world_size, rank, n=103, **kwargs):
    from scetm_mnn.datasets import simulate
    from scetm_mnn.model import BatchCorrectedSCETM

    adata = simulate(n_cells=n, n_genes=20, random_state=0)
    x = adata.X.toarray()
    x[:, 0] = np.arange(n)  # the first gene says which cell a row is
    adata.X = sparse.csr_matrix(x)
    BatchCorrectedSCETM.setup_anndata(adata, batch_key="batch")
    manager = BatchCorrectedSCETM(adata, n_topics=3, n_emb=4).adata_manager
    splitter = PreloadedDataSplitter(manager, batch_size=16, seed=0, **kwargs)
    splitter.trainer = SimpleNamespace(global_rank=rank, world_size=world_size)
    return splitter


def _cells(loader):
    return [int(c) for batch in loader for c in batch["X"][:, 0]]


def test_splitter_gives_each_rank_its_shard_and_all_the_same_validation():
    ranks = [_splitter(3, rank, validation_size=0.2) for rank in range(3)]
    loaders = [s.train_dataloader() for s in ranks]
    assert len({len(loader) for loader in loaders}) == 1
    served = [_cells(loader) for loader in loaders]
    train = set(ranks[0].train_idx.tolist())
    assert set().union(*map(set, served)) == train
    assert sum(map(len, served)) - len(train) < 3  # at most world_size - 1 repeats
    val = [_cells(s.val_dataloader()) for s in ranks]
    assert val[0] == val[1] == val[2] == ranks[0].val_idx.tolist()


# ------------------------------------------------------------------ two processes
@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """Two CPU processes (gloo) training the worker's model with ``strategy="ddp"``."""
    out = tmp_path_factory.mktemp("ddp")
    return out, run_two_ranks(WORKER, out)


def test_ddp_ranks_end_identical_after_disjoint_shards(ddp_run):
    out, (rank0, rank1) = ddp_run
    np.testing.assert_array_equal(rank0["params"], rank1["params"])
    np.testing.assert_array_equal(rank0["latent"], rank1["latent"])
    import ddp_worker

    n_epochs, n_cells = ddp_worker.N_EPOCHS, ddp_worker.N_CELLS
    for epoch in range(n_epochs):
        a, b = set(rank0[f"epoch{epoch}"].tolist()), set(rank1[f"epoch{epoch}"].tolist())
        assert not a & b and len(a | b) == n_cells  # each rank saw only its own half
    per_rank_batch = ddp_worker.BATCH_SIZE // 2  # the global minibatch, shared out
    steps_per_rank = n_epochs * -(-n_cells // 2 // per_rank_batch)
    assert int(rank0["steps"]) == int(rank1["steps"]) == steps_per_rank
    assert int(rank0["history"]) == n_epochs and int(rank1["history"]) == 0  # rank 0 logs
    assert (out / "model" / "model.pt").exists()


def _best_ari(latent, adata) -> float:
    from scetm_mnn import tl

    adata = adata.copy()
    adata.obsm["z"] = latent
    sweep = tl.leiden_sweep(
        adata, "z", "cell_type", "batch", resolutions=(0.05, 0.1, 0.2, 0.4, 0.8)
    )
    return float(sweep["ARI"].max())


@pytest.fixture(scope="module")
def single_run(one_thread):
    """The worker's training in this one process (one thread), for the DDP run to match."""
    import ddp_worker

    return ddp_worker.train(devices=1)


def test_ddp_follows_the_single_process_loss_curve(ddp_run, single_run):
    """2 ranks sharing BatchNorm statistics and noise train as 1 process does."""
    _, (rank0, _) = ddp_run
    one, two = np.asarray(single_run[2]), rank0["losses"]
    assert one.shape == two.shape  # the same steps over the same samples
    relative = np.abs(two - one) / np.abs(one)
    assert relative[:20].max() < 1e-5  # the same minibatches, statistics and draws
    # After that, float rounding (two half-batch gradients averaged, not one) is amplified
    # as any perturbation of training is: the gap grows about e-fold every 12 steps. Over
    # seeds 0-6 it was at most 2e-3 by step 100, and 0.6-2.2 % by step 380, with either
    # sign; one process whose parameters were scaled by 1 + 1e-7 noise once diverged from
    # itself by 0.2-0.7 % over the same 380 steps, and another seed differs by up to 5 %.
    assert relative[:100].max() < 5e-3
    import ddp_worker

    epoch = lambda losses: losses.reshape(ddp_worker.N_EPOCHS, -1).mean(1)  # noqa: E731
    assert (np.abs(epoch(two) - epoch(one)) / epoch(one)).max() < 0.02  # 1.5 % at most


def test_ddp_latent_clusters_like_single_process(ddp_run, single_run):
    import ddp_worker

    _, (rank0, _) = ddp_run
    single, adata, _ = single_run
    one = _best_ari(single.get_latent_representation(), adata)
    ddp = _best_ari(rank0["latent"], adata)
    assert one > 0.9
    assert ddp >= one - 0.05
    # the same number of samples seen gives the same fit of the counts
    reconstruction = ddp_worker.last(single, "reconstruction_loss_train")
    assert abs(float(rank0["reconstruction"]) - reconstruction) / reconstruction < 0.02


# ------------------------------------------------------------------ device data path
def test_gather_csr_rows_matches_scipy():
    x = sparse.random(40, 9, density=0.3, format="csr", random_state=1, dtype=np.float32)
    x[5] = 0  # an empty row
    x.eliminate_zeros()
    rows = np.array([5, 0, 39, 5, 17])
    got = gather_csr_rows(
        torch.from_numpy(x.indptr.astype(np.int64)),
        torch.from_numpy(x.indices.astype(np.int64)),
        torch.from_numpy(x.data),
        torch.from_numpy(rows),
        9,
    )
    np.testing.assert_array_equal(got.numpy(), x[rows].toarray())


@pytest.mark.parametrize("kind", ["dense", "csr", "shifted"])
def test_minibatches_from_device_data_equal_host_minibatches(kind, monkeypatch):
    monkeypatch.setattr("scetm_mnn._rows.DENSE_PRELOAD_BYTES", 0)
    x = sparse.random(30, 8, density=0.4, format="csr", random_state=0, dtype=np.float32)
    rng = np.random.default_rng(0)
    matrix = {"dense": x.toarray(), "csr": x, "shifted": x}[kind]
    corrected = None
    if kind == "shifted":
        basis = np.linalg.qr(rng.normal(size=(8, 2)))[0]
        corrected = ShiftedRows(Rows(x), rng.normal(size=(30, 2)), basis)
    make = lambda: MinibatchSource(matrix, np.arange(30) % 3, corrected=corrected)  # noqa: E731
    host, device = make(), make()
    assert device.place(torch.device("cpu"), budget_bytes=10**7) == "device"
    assert isinstance(device.x, DeviceRows)
    rows = rng.permutation(30)[:12]
    a, b = host.tensors(rows), device.tensors(rows)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key])


def test_data_too_large_or_on_disk_stay_on_the_host(tmp_path):
    source = MinibatchSource(np.ones((10, 4)), np.zeros(10))
    assert source.place(torch.device("cpu"), budget_bytes=159) == "host"  # needs 160 bytes
    assert isinstance(source.x, Rows)
    from scetm_mnn.datasets import simulate

    backed = simulate(n_cells=50, n_genes=10, random_state=0, filename=tmp_path / "s.h5ad")
    on_disk = MinibatchSource(backed.X, np.zeros(50))
    assert on_disk.place(torch.device("cpu"), budget_bytes=10**9) == "host"
    assert on_disk.x.on_disk


def test_history_logger_keeps_the_last_value_per_epoch():
    logger = HistoryLogger()
    logger.log_metrics({"a": torch.tensor(1.0), "epoch": 0}, step=0)
    logger.log_metrics({"a": 2.0, "epoch": 0}, step=1)
    logger.log_metrics({"a": 3.0, "epoch": 1}, step=2)
    logger.log_metrics({"b": 4.0}, step=7)
    history = logger.history
    assert history["a"].index.name == "epoch" and history["a"]["a"].tolist() == [2.0, 3.0]
    assert history["b"].index.name == "step" and history["b"].index.tolist() == [7]
