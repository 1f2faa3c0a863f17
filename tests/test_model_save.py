"""Model files: saved with plain data, loaded with ``torch.load(weights_only=True)``."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest
import torch

from scetm_mnn.model import BatchCorrectedSCETM
from scetm_mnn.model._serialization import safe_globals


@pytest.fixture(scope="module")
def saved(sim_adata, tmp_path_factory):
    adata = sim_adata.copy()
    BatchCorrectedSCETM.setup_anndata(adata, batch_key="batch")
    model = BatchCorrectedSCETM(adata, n_topics=4, n_emb=6)
    model.train(max_epochs=3, enable_progress_bar=False)
    path = tmp_path_factory.mktemp("saved") / "model"
    model.save(path, save_anndata=True)
    return model, path


def test_the_file_loads_with_weights_only(saved):
    _, path = saved
    with torch.serialization.safe_globals(safe_globals()):
        contents = torch.load(path / "model.pt", weights_only=True)
    assert {"model_state_dict", "attr_dict", "var_names"} <= contents.keys()


def test_load_round_trips_parameters_history_and_saved_data(saved):
    model, path = saved
    loaded = BatchCorrectedSCETM.load(path)  # with the AnnData saved beside it
    np.testing.assert_array_equal(
        model.get_latent_representation(), loaded.get_latent_representation()
    )
    assert loaded.history.keys() == model.history.keys()
    for key, frame in model.history.items():
        pd.testing.assert_frame_equal(
            loaded.history[key].astype(float), frame.astype(float), check_names=True
        )
    assert loaded.is_trained_


class _Exploit:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_a_tampered_file_gets_a_clear_error_and_runs_nothing(tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    with open(bad / "model.pt", "wb") as handle:
        pickle.dump({"model_state_dict": _Exploit(), "attr_dict": {}}, handle)
    with pytest.raises(ValueError, match="cannot be read safely"):
        BatchCorrectedSCETM.load(bad)
    assert "must never run" not in capsys.readouterr().out
    with pytest.raises(FileNotFoundError, match="No model file"):
        BatchCorrectedSCETM.load(tmp_path / "nowhere")
