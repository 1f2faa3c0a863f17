"""The corrector under Lightning Fabric: 2 CPU processes (gloo) against one, and its errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import anndata as ad
import numpy as np
import pytest
import torch

import scetm_mnn as sm
from _ranks import run_two_ranks
from scetm_mnn._distributed import available_cpus, check_world_size
from scetm_mnn.pp._distributed_fit import FitEngine

WORKER = Path(__file__).with_name("ddp_corrector_worker.py")
pytestmark = pytest.mark.usefixtures("one_thread")  # as each rank runs; restored afterwards
needs_two_cores = pytest.mark.skipif(
    available_cpus() < 2, reason="2 CPU processes need 2 cores (devices <= cores)"
)


# ------------------------------------------------------------------ two processes
@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """``ddp_corrector_worker.py`` on 2 ranks: its output folder and each rank's arrays."""
    if available_cpus() < 2:
        pytest.skip("2 CPU processes need 2 cores (devices <= cores)")
    out = tmp_path_factory.mktemp("ddp_corrector")
    return out, run_two_ranks(WORKER, out)


@pytest.fixture(scope="module")
def one_process():
    """The worker's fit in this process: the corrected data and the corrector."""
    import ddp_corrector_worker as worker

    adata = worker.data()
    corrector, _ = worker.correct(adata)
    return adata, corrector


def test_every_rank_holds_the_same_corrector_and_outputs(two_ranks):
    _, (rank0, rank1) = two_ranks
    assert int(rank0["world_size"]) == int(rank1["world_size"]) == 2
    for key in ("net", "space", "pairs", "layer", "latent", "history", "fit_id"):
        np.testing.assert_array_equal(rank0[key], rank1[key], err_msg=key)


def test_only_rank_0_writes_files(two_ranks):
    out, _ = two_ranks
    written = sorted(path.name for path in out.iterdir())
    # the worker's own rank{r}.npz aside: the checkpoint, the corrector, the topic model
    assert written == ["ckpt_rank0", "model_rank0", "rank0.npz", "rank1.npz", "saved_rank0"]
    assert (out / "ckpt_rank0" / "corrector_fit.ckpt").is_file()
    assert sm.pp.MNNCorrector.load(out / "saved_rank0").network_ == "bottleneck"


def _knn_accuracy(x: np.ndarray, labels: np.ndarray) -> float:
    """5-fold cross-validated accuracy of a 15-nearest-neighbour cell-type classifier."""
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    return float(cross_val_score(KNeighborsClassifier(15), x, labels, cv=folds).mean())


def test_two_ranks_find_the_pairs_and_correct_like_one_process(two_ranks, one_process):
    import ddp_corrector_worker as worker

    _, (rank0, _) = two_ranks
    adata, corrector = one_process
    # the search is shared out, its result is that of one process
    np.testing.assert_array_equal(rank0["pairs"], worker.pair_list(adata))
    # the first epoch (2 steps) is the same training, up to float rounding
    np.testing.assert_allclose(rank0["history"][0], corrector.history_[0], rtol=1e-3)
    labels = adata.obs["cell_type"].to_numpy()
    two = adata.copy()
    two.obsm["X_mnn_corrected"] = rank0["latent"]
    for use in (adata, two):
        assert _knn_accuracy(use.obsm["X_mnn_corrected"], labels) > 0.9
    accuracy = [_knn_accuracy(use.obsm["X_mnn_corrected"], labels) for use in (adata, two)]
    entropy = [sm.tl.batch_entropy(use, "X_mnn_corrected", "batch") for use in (adata, two)]
    assert abs(accuracy[1] - accuracy[0]) <= 0.01, accuracy
    assert abs(entropy[1] - entropy[0]) <= 0.01, entropy


def test_the_topic_model_trains_in_the_processes_the_corrector_started(two_ranks):
    import ddp_corrector_worker as worker

    _, (rank0, rank1) = two_ranks
    assert int(rank0["model_world_size"]) == int(rank1["model_world_size"]) == 2
    np.testing.assert_array_equal(rank0["model"], rank1["model"])
    per_rank_batch = worker.MODEL_BATCH // 2  # the global minibatch, shared out
    steps = worker.MODEL_EPOCHS * -(-worker.N_CELLS // 2 // per_rank_batch)
    assert int(rank0["model_steps"]) == int(rank1["model_steps"]) == steps


def test_a_fit_checkpointed_in_two_processes_resumes_in_one(two_ranks):
    import ddp_corrector_worker as worker

    out, (rank0, _) = two_ranks
    adata = worker.data()
    corrector = sm.pp.MNNCorrector("batch", **worker.CORRECT)
    corrector.fit(adata, ckpt_path=out / "ckpt_rank0", resume=True)  # trained: no step
    np.testing.assert_array_equal(corrector.history_, rank0["history"])
    np.testing.assert_allclose(worker.flat(corrector.net_), rank0["net"], rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------ the engine's shares
@pytest.mark.parametrize("world", [2, 3, 4])
@pytest.mark.parametrize("n", [1, 5, 8, 63, 64])
def test_shares_are_equal_and_make_the_minibatch(world, n):
    idx = torch.arange(100, 100 + n)
    shares = [FitEngine(SimpleNamespace(world_size=world, global_rank=r)) for r in range(world)]
    parts = [engine.share(idx) for engine in shares]
    assert len({part.numel() for part in parts}) == 1  # no rank waits for another
    served = torch.cat(parts)
    assert set(served.tolist()) == set(idx.tolist())
    padding = served.numel() - n
    assert 0 <= padding < world  # the first pairs, as DistributedSampler pads
    if n % world == 0:
        assert padding == 0
    assert FitEngine().share(idx) is idx  # one process: the minibatch itself


def test_batch_pairs_are_dealt_once_and_balanced():
    costs = [100.0, 10.0, 60.0, 50.0, 5.0, 1.0]
    mine = [FitEngine(SimpleNamespace(world_size=2, global_rank=r)).assign(costs) for r in (0, 1)]
    assert [a + b for a, b in zip(*mine)] == [1] * len(costs)  # each batch pair once
    loads = [sum(c for c, m in zip(costs, ranks) if m) for ranks in mine]
    assert max(loads) - min(loads) <= max(costs)
    assert FitEngine().assign(costs) == [True] * len(costs)


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    ("runtime", "message"),
    [
        ({"devices": 0}, "devices must be a whole number"),
        ({"devices": 2.0}, "devices must be a whole number"),
        ({"num_nodes": 0}, "num_nodes must be"),
        ({"strategy": "fsdp"}, "strategy must be 'auto' or 'ddp'"),
        ({"accelerator": "tpu"}, "accelerator must be one of"),
        ({"devices": available_cpus() + 1, "strategy": "ddp"}, "CPU cores available"),
    ],
)
def test_runtime_arguments_that_cannot_run_are_refused_at_once(runtime, message):
    with pytest.raises(ValueError, match=message):
        sm.pp.MNNCorrector("batch", **runtime)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is available here")
def test_a_gpu_that_is_not_there_is_refused_with_the_fix():
    with pytest.raises(ValueError, match=r"no CUDA GPU here .*pass accelerator='cpu'"):
        sm.pp.MNNCorrector("batch", devices=2, strategy="ddp", accelerator="gpu")


@needs_two_cores
def test_several_processes_need_a_script(monkeypatch):
    monkeypatch.setattr(sys, "ps1", ">>> ", raising=False)  # an interactive session
    monkeypatch.delenv("LOCAL_RANK", raising=False)

    def launched(*args, **kwargs):  # it would run pytest again, as rank 1
        raise AssertionError("the processes were launched")

    monkeypatch.setattr("lightning.fabric.Fabric.launch", launched)
    adata = sm.datasets.simulate(n_cells=200, n_genes=50, random_state=0)
    sm.pp.preprocess(adata, n_top_genes=50, batch_key="batch")
    with pytest.raises(ValueError, match="cannot run in a notebook"):
        sm.pp.mnn_correct(adata, "batch", devices=2, strategy="ddp")


def test_runtime_arguments_are_not_recorded_or_saved(tmp_path):
    adata = sm.datasets.simulate(n_cells=200, n_genes=50, random_state=0)
    sm.pp.preprocess(adata, n_top_genes=50, batch_key="batch")
    corrector = sm.pp.MNNCorrector("batch", max_epochs=1, strategy="auto", num_nodes=1)
    corrector.fit_transform(adata)
    assert not {"devices", "strategy", "accelerator", "num_nodes"} & set(
        adata.uns["mnn_corrected"]["params"]
    )
    corrector.save(tmp_path)
    loaded = sm.pp.MNNCorrector.load(tmp_path)
    assert loaded._kwargs["devices"] == 1 and loaded._kwargs["accelerator"] == "cpu"


def test_a_trainer_for_other_processes_than_the_running_ones_is_refused(monkeypatch):
    monkeypatch.setattr("scetm_mnn._distributed.world_size", lambda: 2)
    check_world_size(2, "model.train")  # the same processes: fine
    with pytest.raises(ValueError, match="already runs in 2 processes"):
        check_world_size(1, "model.train")
    adata = sm.datasets.simulate(n_cells=100, n_genes=30, random_state=0)
    sm.model.BatchCorrectedSCETM.setup_anndata(adata, batch_key="batch")
    model = sm.model.BatchCorrectedSCETM(adata, n_topics=3, n_emb=4)
    with pytest.raises(ValueError, match="Pass devices and num_nodes that make 2"):
        model.train(max_epochs=1, accelerator="cpu", devices=1, enable_progress_bar=False)


# ------------------------------------------------------------------ the CLI
@needs_two_cores
def test_the_cli_runs_both_stages_in_two_processes_and_writes_once(tmp_path, sim_adata):
    sim_adata.write_h5ad(tmp_path / "input.h5ad")
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    argv = [
        "run", str(tmp_path / "input.h5ad"), "--batch-key", "batch", "--n-top-genes", "200",
        "--max-epochs", "2", "--no-report", "--out", str(out), "--devices", "2",
        "--accelerator", "cpu",
    ]  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "scetm_mnn.cli", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("Outputs in") == 1  # rank 0 reports
    # the outputs once (no state left: rank 0 cleared it after the run)
    outputs = ["costs.csv", "input_scetm_mnn.h5ad", "model", "topics.png", "umap.png"]
    assert sorted(path.name for path in out.iterdir()) == outputs
    result = ad.read_h5ad(out / "input_scetm_mnn.h5ad")
    assert result.uns["mnn_corrected"]["n_pairs"] > 0
