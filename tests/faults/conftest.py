"""Fixtures of the fault-injection suite: a tiny trained model and a tiny fitted corrector.

Both are built once per session (a few seconds); the tests save them, kill the process that
saves them, fill the disk under them and hand their loaders broken files. Children are
forked from the test process (``fork_child``), so a kill costs no new interpreter.
"""

from __future__ import annotations

import multiprocessing
import sys
from collections.abc import Callable

import pytest

import scetm_mnn as sm
from scetm_mnn.model import BatchCorrectedSCETM


@pytest.fixture(scope="session")
def tiny_model():
    """A topic model trained for one epoch on 200 simulated cells × 50 genes, with its data."""
    adata = sm.datasets.simulate(n_cells=200, n_genes=50, n_batches=2, random_state=0)
    BatchCorrectedSCETM.setup_anndata(adata, batch_key="batch")
    model = BatchCorrectedSCETM(adata, n_topics=3, n_emb=4)
    model.train(max_epochs=1, enable_progress_bar=False)
    return model


@pytest.fixture(scope="session")
def tiny_corrector():
    """A corrector fitted briefly on 200 preprocessed simulated cells."""
    adata = sm.datasets.simulate(n_cells=200, n_genes=60, n_batches=2, random_state=1)
    sm.pp.preprocess(adata, n_top_genes=50, batch_key="batch")
    quick = {"max_epochs": 2, "pairs_per_epoch": 64, "search_rounds": 1}
    return sm.pp.MNNCorrector("batch", **quick).fit(adata)


@pytest.fixture
def fork_child():
    """Run ``target(conn)`` in a forked child; returns ``(process, connection)``.

    Skips where ``fork`` is not available. Children still alive at the end are killed.
    """
    if sys.platform != "linux":
        pytest.skip("forking a child to kill it needs Linux")
    context = multiprocessing.get_context("fork")
    children = []

    def start(target: Callable) -> tuple:
        receive, send = context.Pipe(duplex=False)
        process = context.Process(target=target, args=(send,), daemon=True)
        process.start()
        send.close()
        children.append(process)
        return process, receive

    yield start
    for process in children:
        if process.is_alive():
            process.kill()
        process.join(5)
