"""Golden outputs of the MNN corrector, so that a refactor provably changes nothing.

``tests/data/golden_corrector.npz`` holds what ``scetm_mnn.pp.mnn_correct`` and
``MNNCorrector.transform`` wrote on a small seeded simulation, and
``tests/data/golden_corrector/`` a corrector saved by ``MNNCorrector.save``; both were
made by the code of 420274a, before the corrector was split into modules (issue #31).
Every numeric parameter is passed explicitly, so a later change of a default does not
touch them. A deliberate change of the corrector's output regenerates them::

    python tests/test_golden_corrector.py --update

A seeded fit's last digits depend on the CPU the float kernels run on: the same code,
torch and seed gave other numbers on an AMD EPYC than on the Intel Xeon the arrays were
first made on (the pairs and the PCA basis agree; the trained network does not, from
the first epoch's loss on: 1.5638 against 1.5624; forcing torch's, MKL's or oneDNN's
instruction set did not reconcile them). So the arrays are kept per CPU vendor
(``golden_corrector.npz`` for GenuineIntel, ``golden_corrector_<vendor>.npz`` for
another), both made by the same code, and a machine with none skips, saying how to make
them. The saved corrector is a file of the Intel machine's: loading it must give the
arrays of the machine that loads it.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_limits

import scetm_mnn as sm
from _cpu import cpu_vendor

DATA = Path(__file__).parent / "data"


def golden_path(vendor: str) -> Path:
    """Where the golden arrays of CPUs of ``vendor`` are kept."""
    return DATA / (
        "golden_corrector.npz" if vendor == "GenuineIntel" else f"golden_corrector_{vendor}.npz"
    )


GOLDEN = golden_path(cpu_vendor())
SAVED = DATA / "golden_corrector"
KEY = "mnn_corrected"
TOL = {"rtol": 1e-6, "atol": 1e-6}

CORRECT = {
    "layer": None,
    "n_neighbors": 15,
    "n_search_comps": 10,
    "search_rounds": 3,
    "max_search_cells": 10_000,
    "n_comps": 10,
    "latent": "pca",
    "network": "residual",
    "n_hidden": 1024,
    "n_blocks": 2,
    "batch_weight": 1.0,
    "rec_weight": 0.1,
    "distance": "l1",
    "max_epochs": 3,
    "batch_size": 64,
    "pairs_per_epoch": 256,
    "lr": 0.1,
    "early_stopping_patience": 10,
    "random_state": 0,
    "chunk_size": 128,
}
"""``mnn_correct``'s arguments: the residual network, trained for a few epochs."""
SAVED_CORRECTOR = {
    **CORRECT,
    "n_comps": 5,
    "n_search_comps": 5,
    "network": "bottleneck",
    "n_hidden": 8,
    "adapter": "local",
    "adapter_ridge": 1.0,
}
"""The saved corrector's: a bottleneck of 8 units over 5 components (a few KB on disk)."""
NEW = "batch_2"


@contextmanager
def single_threaded() -> Iterator[None]:
    """One torch and BLAS thread: a seeded fit's numbers depend on the thread count.

    Set around each fit rather than once: a pass through scanpy's preprocessing can
    reset torch's (OpenMP) thread count to the machine's.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        torch.set_num_threads(threads)


def simulated():
    """300 preprocessed cells × 100 genes in 3 batches."""
    adata = sm.datasets.simulate(n_cells=300, n_genes=100, n_batches=3, random_state=0)
    sm.pp.preprocess(adata, n_top_genes=100, batch_key="batch")
    return adata


def corrected(adata) -> dict[str, np.ndarray]:
    """What ``mnn_correct`` writes, as arrays."""
    with single_threaded():
        out = sm.pp.mnn_correct(
            adata, "batch", key_added=KEY, dense_layer=True, copy=True, **CORRECT
        )
    pairs = out.obsp[KEY + "_pairs"].tocoo()
    upper = pairs.row < pairs.col
    order = np.lexsort((pairs.col[upper], pairs.row[upper]))
    return {
        "layer": np.asarray(out.layers[KEY]),
        "latent": out.obsm["X_" + KEY],
        "shift": out.obsm[KEY + "_shift"],
        "basis": out.varm[KEY + "_basis"],
        "pairs": np.stack([pairs.row[upper][order], pairs.col[upper][order]], axis=1),
        "history": np.asarray(out.uns[KEY]["history"]),
    }


def transformed(corrector, adata) -> dict[str, np.ndarray]:
    """What ``corrector.transform`` writes for all cells (``batch_2`` new), as arrays."""
    with single_threaded(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        out = corrector.transform(adata, key_added=KEY, dense_layer=True, copy=True)
    return {
        "query_layer": np.asarray(out.layers[KEY]),
        "query_latent": out.obsm["X_" + KEY],
        "query_shift": out.obsm[KEY + "_shift"],
    }


def fitted(adata):
    reference = adata[adata.obs["batch"] != NEW].copy()
    with single_threaded():
        return sm.pp.MNNCorrector("batch", **SAVED_CORRECTOR).fit(reference)


@pytest.fixture(scope="module")
def adata():
    return simulated()


@pytest.fixture(scope="module")
def golden():
    if not GOLDEN.is_file():
        pytest.skip(
            f"No golden arrays for this CPU ({cpu_vendor()}): seeded fits differ in their "
            "last digits between CPU vendors. Make them from a commit whose output is "
            "trusted with `python tests/test_golden_corrector.py --update`."
        )
    with np.load(GOLDEN) as stored:
        return dict(stored)


def _compare(got: dict, golden: dict) -> None:
    for name, value in got.items():
        if name == "pairs":
            np.testing.assert_array_equal(value, golden[name], err_msg=name)
        else:
            np.testing.assert_allclose(value, golden[name], **TOL, err_msg=name)


def test_mnn_correct_gives_the_golden_output(adata, golden):
    _compare(corrected(adata), golden)


def test_a_refitted_corrector_transforms_as_the_golden_one(adata, golden):
    got = transformed(fitted(adata), adata)
    _compare(got, golden)


def test_a_corrector_saved_before_the_split_loads_and_transforms_the_same(adata, golden):
    corrector = sm.pp.MNNCorrector.load(SAVED)
    assert corrector.reference_batches_ == ["batch_0", "batch_1"]
    assert corrector.network_ == "bottleneck"
    # Another vendor's refit is not the saved (Intel) corrector: its arrays are kept apart.
    saved = {k[len("saved_") :]: v for k, v in golden.items() if k.startswith("saved_")}
    _compare(transformed(corrector, adata), saved or golden)


def update() -> None:
    """Regenerate the golden arrays and the saved corrector from the current code."""
    adata = simulated()
    corrector = fitted(adata)
    arrays = {**corrected(adata), **transformed(corrector, adata)}
    if cpu_vendor() != "GenuineIntel":
        saved = transformed(sm.pp.MNNCorrector.load(SAVED), adata)
        arrays.update({f"saved_{k}": v for k, v in saved.items()})
    np.savez_compressed(GOLDEN, **arrays)
    if cpu_vendor() == "GenuineIntel":  # the saved corrector stays the original machine's
        corrector.save(SAVED, overwrite=True)


if __name__ == "__main__":
    if sys.argv[1:] != ["--update"]:
        sys.exit(f"usage: python {sys.argv[0]} --update   (rewrites {GOLDEN} and {SAVED})")
    update()
    print(f"wrote {GOLDEN} and {SAVED}")
