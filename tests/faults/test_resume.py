"""Resume after a kill: the corrector's fit and the pipeline, SIGKILLed and resumed.

The CI share of the kill suite (``make faults`` runs the full one, ``_killer.py``): a
corrector fit killed between epochs resumes to the uninterrupted fit's corrector, and a
``scetm-mnn run`` killed during the topic model's training resumes with ``--resume`` to
the uninterrupted run's outputs, every file left loadable.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

import scetm_mnn as sm
from scetm_mnn._pipeline import run_pipeline
from scetm_mnn.pp._checkpoint import CHECKPOINT_FILE, FitCheckpoint

try:  # tests/faults as a package, or as a folder on sys.path
    from . import _killer
except ImportError:
    import _killer

FIT = {"max_epochs": 12, "random_state": 3}
# One torch and BLAS thread, as in the children (a seed's numbers depend on the count).
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data():
    adata = sm.datasets.simulate(n_cells=300, n_genes=80, n_batches=2, random_state=0)
    sm.pp.preprocess(adata, n_top_genes=80, batch_key="batch")
    return adata


@pytest.fixture(autouse=True)
def _every_epoch(monkeypatch):
    monkeypatch.setenv("SCETM_MNN_CHECKPOINT_INTERVAL", "0")


def _corrected(adata, **kwargs) -> np.ndarray:
    out = sm.pp.mnn_correct(adata, "batch", copy=True, **FIT, **kwargs)
    return out.layers["mnn_corrected"], out.obsm["X_mnn_corrected"], out.uns["mnn_corrected"]


CHILD = """
import json, sys, time, numpy as np, torch, anndata as ad
torch.set_num_threads(1)
import scetm_mnn as sm
from scetm_mnn.pp import _checkpoint, _fitting
source, ckpt, resume, out = sys.argv[1:]
save = _checkpoint.FitCheckpoint.save_training
def slow(self, state, final):  # slow epochs, so that the kill lands between two
    save(self, state, final)
    time.sleep(0.3)
def no_search(*args, **kwargs):
    raise AssertionError("the pairs were searched again")
_checkpoint.FitCheckpoint.save_training = slow
if resume == "1":
    _fitting.find_mnn_pairs = no_search
adata = ad.read_h5ad(source)
corrected = sm.pp.mnn_correct(
    adata, "batch", max_epochs={max_epochs}, random_state={random_state}, copy=True,
    ckpt_path=None if ckpt == "-" else ckpt, resume=resume == "1",
)
np.save(out + ".npy", corrected.layers["mnn_corrected"])
json.dump(corrected.uns["mnn_corrected"]["history"], open(out + ".json", "w"))
"""


def _child(script, *args) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(script), *map(str, args)], env=_killer.child_env()
    )


def test_a_killed_corrector_fit_resumes_to_the_uninterrupted_one(data, tmp_path):
    source = tmp_path / "data.h5ad"
    data.write_h5ad(source)
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(CHILD.format(**FIT)))
    ckpt = tmp_path / "ckpt"
    child = _child(script, source, ckpt, 0, tmp_path / "killed")
    epoch, deadline = 0, time.monotonic() + 120
    while epoch < 3 and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
        if (ckpt / CHECKPOINT_FILE).exists():
            state = torch.load(ckpt / CHECKPOINT_FILE, weights_only=True)
            epoch = state.get("training", {}).get("epoch", 0)
    child.send_signal(signal.SIGKILL)
    assert child.wait() == -signal.SIGKILL  # killed, not finished
    saved = torch.load(ckpt / CHECKPOINT_FILE, weights_only=True)  # the kill left it whole
    assert 3 <= saved["training"]["epoch"] < FIT["max_epochs"]
    assert _child(script, source, ckpt, 1, tmp_path / "resumed").wait() == 0
    assert _child(script, source, "-", 0, tmp_path / "whole").wait() == 0
    resumed, whole = np.load(tmp_path / "resumed.npy"), np.load(tmp_path / "whole.npy")
    np.testing.assert_allclose(resumed, whole, atol=1e-6, rtol=0)
    history = json.loads((tmp_path / "whole.json").read_text())
    assert json.loads((tmp_path / "resumed.json").read_text()) == history
    assert len(history) == FIT["max_epochs"]


class _Stop(Exception):
    pass


def test_an_interrupted_fit_resumes_exactly_and_other_parameters_are_refused(
    data, tmp_path, monkeypatch
):
    save = FitCheckpoint.save_training

    def stop_after_five(self, state, final):
        save(self, state, final)
        if state["epoch"] == 5:
            raise _Stop

    monkeypatch.setattr(FitCheckpoint, "save_training", stop_after_five)
    with pytest.raises(_Stop):
        _corrected(data, ckpt_path=tmp_path / "fit.ckpt")
    monkeypatch.undo()
    with pytest.raises(ValueError, match="other data or other parameters"):
        sm.pp.mnn_correct(data, "batch", copy=True, max_epochs=13, ckpt_path=tmp_path / "fit.ckpt",
                          resume=True)  # fmt: skip
    resumed = _corrected(data, ckpt_path=tmp_path / "fit.ckpt", resume=True)
    whole = _corrected(data)
    np.testing.assert_array_equal(resumed[0], whole[0])
    # Resuming a finished fit trains nothing and gives the same corrector again.
    again = _corrected(data, ckpt_path=tmp_path / "fit.ckpt", resume=True)
    np.testing.assert_array_equal(again[0], whole[0])
    # resume=False starts afresh (and replaces the checkpoint); no checkpoint: afresh too.
    fresh = _corrected(data, ckpt_path=tmp_path / "other", resume=True)
    np.testing.assert_array_equal(fresh[0], whole[0])


def test_a_pipeline_resumed_with_other_arguments_is_refused(tmp_path):
    adata = sm.datasets.simulate(n_cells=200, n_genes=60, n_batches=2, random_state=0)
    kwargs = {"n_top_genes": 60, "max_epochs": 2, "report": False, "max_cells": None}
    with pytest.raises(ValueError, match="needs the out folder"):
        run_pipeline(adata, "batch", resume=True, **kwargs)
    state = tmp_path / "checkpoints"
    state.mkdir()
    (state / "state.json").write_text('{"format": 1, "fingerprint": {}, "done": [], "costs": []}')
    with pytest.raises(ValueError, match="other arguments or another input"):
        run_pipeline(adata, "batch", out=tmp_path, resume=True, **kwargs)


def test_a_killed_run_resumes_to_the_uninterrupted_result(tmp_path):
    source = _killer.write_input(tmp_path / "input.h5ad")
    reference = tmp_path / "reference"
    whole = _killer.run_cli(_killer.cli_args(source, reference, full=False))
    assert whole["returncode"] == 0, whole["stderr"]
    out = tmp_path / "killed"
    killed = _killer.run_cli(_killer.cli_args(source, out, full=False), "train", delay=0.3)
    assert killed["killed"], killed["stderr"]
    assert (out / "checkpoints" / "state.json").exists()
    assert _killer.unloadable(out) == []
    resumed = _killer.run_cli(_killer.cli_args(source, out, resume=True, full=False))
    assert resumed["returncode"] == 0, resumed["stderr"]
    assert "Resuming the run" in resumed["stderr"]
    assert "preprocess: started" not in resumed["stderr"]  # the finished phases are skipped
    assert _killer.unloadable(out) == []
    assert _killer.same_result(out, reference) == []
    assert not (out / "checkpoints").exists()  # a finished run keeps no state
