"""Golden outputs of the topic model, so that a refactor provably changes nothing.

``tests/data/golden_model.npz`` holds the outputs of a seeded ``BatchCorrectedSCETM`` on a
small simulation in three set-ups: original mode (counts, batch bias), corrected mode
reading the corrector's latent (with its MNN pairs, so the MNN term is on), and corrected
mode reading the low-rank corrected expression. The corrector runs with the golden
corrector's arguments (``tests/test_golden_corrector.py``). ``tests/data/golden_model/`` is
the model of the second set-up saved by ``model.save`` without its AnnData. Both were
written by the model code of e8bc9cc, before ``model/_scetm.py`` was split into mixins
(issue #31), with the model's arguments spelled out below. To accept a deliberate change
of the model's outputs, rewrite them::

    python tests/test_golden_model.py --update
"""

from __future__ import annotations

import sys
import warnings

import numpy as np
import pytest
import scvi

import scetm_mnn as sm
from _cpu import cpu_vendor
from scetm_mnn.model import BatchCorrectedSCETM
from test_golden_corrector import CORRECT, DATA, KEY, TOL, single_threaded

# Kept per CPU vendor, as the corrector's (see tests/test_golden_corrector.py); the AMD
# arrays were made by the code of e58eaa1, whose Intel arrays these tests held.
GOLDEN = DATA / (
    "golden_model.npz" if cpu_vendor() == "GenuineIntel" else f"golden_model_{cpu_vendor()}.npz"
)
SAVED = DATA / "golden_model"

MODEL = {
    "n_topics": 6,
    "n_emb": 8,
    "hidden_sizes": (128,),
    "dropout_rate": 0.1,
    "mnn_loss": "local",
}
TRAIN = {"max_epochs": 3, "batch_size": 256, "lr": 5e-3, "seed": 0}
SETUPS = {
    "original": {"batch_key": "batch"},
    "latent": {
        "layer": "counts",
        "batch_key": "batch",
        "corrected_layer": KEY,
        "mnn_pairs_key": KEY + "_pairs",
        "corrected_input": "latent",
    },
    "expression": {
        "layer": "counts",
        "batch_key": "batch",
        "corrected_layer": KEY,
        "corrected_input": "expression",
    },
}
"""``setup_anndata``'s arguments of each set-up; ``original`` reads the raw simulation."""
SAVED_SETUP = "latent"


def simulated():
    """300 cells × 100 genes (2 batches) as simulated, with raw counts in ``X``."""
    return sm.datasets.simulate(n_cells=300, n_genes=100, random_state=0)


def corrected():
    """The simulation preprocessed (counts in ``layers["counts"]``) and MNN-corrected."""
    adata = simulated()
    sm.pp.preprocess(adata, n_top_genes=100, batch_key="batch")
    with single_threaded():
        sm.pp.mnn_correct(adata, "batch", key_added=KEY, dense_layer=False, **CORRECT)
    return adata


def data(setup: str):
    return simulated() if setup == "original" else corrected()


def trained(setup: str, adata) -> BatchCorrectedSCETM:
    scvi.settings.seed = 0  # the initial weights' seed
    with single_threaded(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's notes on a CPU run
        BatchCorrectedSCETM.setup_anndata(adata, **SETUPS[setup])
        model = BatchCorrectedSCETM(adata, **MODEL)
        model.train(**TRAIN, enable_progress_bar=False)
    return model


def outputs(setup: str, model: BatchCorrectedSCETM) -> dict[str, np.ndarray]:
    """The model's outputs, as arrays named ``<setup>_<output>``."""
    with single_threaded():
        got = {
            "latent": model.get_latent_representation(),
            "theta": model.get_topic_proportions(),
            "beta": model.get_topic_gene_matrix().to_numpy(),
            "alpha": model.get_topic_embeddings().to_numpy(),
            "rho": model.get_gene_embeddings().to_numpy(),
            "topic_names": np.asarray(model.topic_names),
            "top_genes": model.get_top_genes(5).to_numpy().astype(str),
        }
    return {f"{setup}_{name}": value for name, value in got.items()}


@pytest.fixture(scope="module")
def golden():
    if not GOLDEN.is_file():
        pytest.skip(
            f"No golden arrays for this CPU ({cpu_vendor()}): seeded fits differ in their "
            "last digits between CPU vendors. Make them from a commit whose output is "
            "trusted with `python tests/test_golden_model.py --update`."
        )
    with np.load(GOLDEN) as stored:
        return dict(stored)


def _compare(got: dict, golden: dict) -> None:
    for name, value in got.items():
        if value.dtype.kind in "US":
            np.testing.assert_array_equal(value, golden[name], err_msg=name)
        else:
            np.testing.assert_allclose(value, golden[name], **TOL, err_msg=name)


@pytest.mark.parametrize("setup", list(SETUPS))
def test_a_trained_model_gives_the_golden_outputs(setup, golden):
    _compare(outputs(setup, trained(setup, data(setup))), golden)


def test_a_model_saved_before_the_split_loads_and_gives_the_same_outputs(golden):
    model = BatchCorrectedSCETM.load(SAVED, adata=data(SAVED_SETUP), accelerator="cpu")
    setup_args = model.adata_manager.registry["setup_args"]
    assert {k: setup_args[k] for k in SETUPS[SAVED_SETUP]} == SETUPS[SAVED_SETUP]
    assert model.is_trained_
    # the outputs it gave when it was written (golden "saved_*"; its defaults were older)
    _compare(_as_saved(outputs(SAVED_SETUP, model)), golden)


def _as_saved(got: dict) -> dict:
    return {f"saved_{name}": value for name, value in got.items()}


def update() -> None:
    """Regenerate the golden arrays from the current code; keep the saved model.

    The saved model stays as it was written (it checks that old files load); its outputs
    are stored again under ``saved_*``. Without a saved model, one is written now.
    """
    arrays, models = {}, {}
    for setup in SETUPS:
        models[setup] = trained(setup, data(setup))
        arrays.update(outputs(setup, models[setup]))
    if not SAVED.exists():
        models[SAVED_SETUP].save(SAVED, overwrite=True, save_anndata=False)
    saved = BatchCorrectedSCETM.load(SAVED, adata=data(SAVED_SETUP), accelerator="cpu")
    arrays.update(_as_saved(outputs(SAVED_SETUP, saved)))
    np.savez_compressed(GOLDEN, **arrays)


if __name__ == "__main__":
    if sys.argv[1:] != ["--update"]:
        sys.exit(f"usage: python {sys.argv[0]} --update   (rewrites {GOLDEN})")
    update()
    print(f"wrote {GOLDEN}")
