"""Training control: early stopping on the validation ELBO, the NaN guard, checkpoint resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from scetm_mnn.model import BatchCorrectedSCETM

FAST = {"enable_progress_bar": False, "enable_model_summary": False}


def _model(sim_adata, **kwargs):
    adata = sim_adata.copy()
    BatchCorrectedSCETM.setup_anndata(adata, batch_key="batch")
    return BatchCorrectedSCETM(adata, n_topics=4, n_emb=8, **kwargs)


def _params(model) -> np.ndarray:
    return torch.cat([p.detach().flatten() for p in model.module.parameters()]).numpy()


def test_early_stopping_monitors_the_validation_elbo(sim_adata):
    model = _model(sim_adata)
    model.train(
        max_epochs=60,
        early_stopping=True,
        early_stopping_patience=2,
        early_stopping_min_delta=1e6,  # no improvement is ever large enough: stop early
        **FAST,
    )
    history = model.history
    assert "elbo_validation" in history and "elbo_train" in history
    assert len(history["elbo_validation"]) == 3  # the first pass, then two without progress
    assert model.trainer.current_epoch < 60
    assert len(model.validation_indices) == round(0.1 * sim_adata.n_obs)


class _Monitor(Callback):
    """Collects what callbacks see of the epoch metrics (``trainer.callback_metrics``)."""

    def __init__(self):
        self.seen: list[set[str]] = []

    def on_train_epoch_end(self, trainer, pl_module):
        self.seen.append(set(trainer.callback_metrics))


def test_training_metrics_reach_lightning_callbacks(sim_adata):
    monitor = _Monitor()
    _model(sim_adata).train(max_epochs=2, callbacks=[monitor], **FAST)
    assert {"elbo_train", "reconstruction_loss_train", "train_loss"} <= monitor.seen[-1]


def test_nan_loss_stops_training_with_the_likely_causes(sim_adata):
    model = _model(sim_adata)
    with torch.no_grad():
        model.module.alpha.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match=r"learning rate.*raw counts"):
        model.train(max_epochs=2, **FAST)


def test_resuming_from_a_checkpoint_gives_the_uninterrupted_model(sim_adata, tmp_path):
    checkpoints = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, every_n_epochs=1)
    whole = _model(sim_adata)
    whole.train(max_epochs=4, seed=3, callbacks=[checkpoints], **FAST)
    second = sorted(tmp_path.glob("epoch=1*.ckpt"))
    assert len(second) == 1
    resumed = _model(sim_adata)
    resumed.train(max_epochs=4, seed=3, ckpt_path=str(second[0]), **FAST)
    assert resumed.trainer.global_step == whole.trainer.global_step
    np.testing.assert_allclose(_params(resumed), _params(whole), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        resumed.get_latent_representation(), whole.get_latent_representation(), atol=1e-5
    )
    # The history logged before the checkpoint comes back with it: every epoch's row.
    assert set(resumed.history) == set(whole.history)
    for key, frame in whole.history.items():
        assert resumed.history[key].index.tolist() == [0, 1, 2, 3]
        np.testing.assert_allclose(resumed.history[key].to_numpy(), frame.to_numpy())
