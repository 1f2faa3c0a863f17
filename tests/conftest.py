"""Session-wide fixtures shared by the whole suite.

Expensive objects (simulated data, real data, trained models) are built once per session
so numba compilation and training are paid once.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import scvi
import torch

from scetm_mnn.datasets import simulate


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """One torch thread for the whole session: a seeded training gives the same numbers on
    any machine and in any test order (the result of a seed depends on the thread count),
    and small problems train faster on one thread when the machine's cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _seed():
    scvi.settings.seed = 0
    yield


@pytest.fixture(scope="module")
def one_thread():
    """One torch and BLAS thread for a module (``pytestmark = usefixtures("one_thread")``):
    results are seeded either way, and multithreading small problems slows them down
    many-fold when the machine's cores are shared."""
    from threadpoolctl import threadpool_limits

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1):
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def sim_adata():
    """Simulated counts, 600 cells × 300 genes, 2 batches, 4 types (do not modify)."""
    return simulate(n_cells=600, n_genes=300, n_batches=2, n_cell_types=4, random_state=0)


@pytest.fixture(scope="session")
def sim_topic_model(sim_adata):
    """A topic model trained on the counts of a copy of ``sim_adata`` (12 topics, 40 epochs,
    seed 0; about 3 s), whose topics recover the 4 simulated programmes; do not modify."""
    from scetm_mnn.model import BatchCorrectedSCETM

    adata = sim_adata.copy()
    BatchCorrectedSCETM.setup_anndata(adata, batch_key="batch")
    scvi.settings.seed = 0
    model = BatchCorrectedSCETM(adata, n_topics=12, n_emb=16)
    model.train(max_epochs=40, seed=0, enable_progress_bar=False)
    return model


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real-data directory from ``$SCETM_MNN_DATA``; skips when it is not set."""
    path = os.environ.get("SCETM_MNN_DATA")
    if not path:
        pytest.skip("SCETM_MNN_DATA is not set; real-data tests need the Baron pancreas files.")
    return Path(path)


@pytest.fixture(scope="session")
def baron_mouse(data_dir):
    """Baron mouse pancreas, raw counts, ``obs['batch']``/``obs['cell_type']`` (do not modify)."""
    from scetm_mnn.datasets import baron_pancreas

    return baron_pancreas("mouse", data_dir=data_dir)


@pytest.fixture(scope="session")
def baron_human(data_dir):
    """Baron human pancreas subset, raw counts (do not modify)."""
    from scetm_mnn.datasets import baron_pancreas

    return baron_pancreas("human", data_dir=data_dir)
