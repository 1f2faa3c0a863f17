import numpy as np
import pandas as pd
import pytest
import scvi
from lightning.pytorch.callbacks import Callback
from scipy import sparse

from scetm_mnn.model import BatchCorrectedSCETM, default_max_epochs
from scetm_mnn.model._training import DEFAULT_MNN_WEIGHT

FAST = {"enable_progress_bar": False}


class KLRecorder(Callback):
    """Records the KL weight the plan uses at every optimizer step."""

    def __init__(self):
        self.weights = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.weights.append(float(pl_module.kl_weight))


def _setup(adata, **kwargs):
    BatchCorrectedSCETM.setup_anndata(adata, **kwargs)
    return adata


def _with_log_layer(adata, key="mnn_corrected"):
    x = adata.X.toarray()
    adata.layers[key] = np.log1p(x / x.sum(1, keepdims=True) * 1e4).astype(np.float32)
    return adata


@pytest.fixture(scope="module")
def trained(sim_adata):
    scvi.settings.seed = 0
    adata = _setup(sim_adata.copy(), batch_key="batch")
    model = BatchCorrectedSCETM(adata, n_topics=8, n_emb=16)
    model.kl_recorder = KLRecorder()
    model.train(max_epochs=40, batch_size=256, callbacks=[model.kl_recorder], **FAST)
    return model


def test_outputs_have_documented_shapes(trained):
    n, g = trained.adata.shape
    z = trained.get_latent_representation()
    assert z.shape == (n, 8) and np.isfinite(z).all()
    theta = trained.get_topic_proportions()
    k = trained.n_live_topics  # the exposed topics (train() prunes unused ones and copies)
    assert 2 <= k <= 8 and theta.shape == (n, k)
    np.testing.assert_allclose(theta.sum(1), 1.0, rtol=1e-5)
    assert trained.get_latent_representation(indices=[3, 1]).shape == (2, 8)
    np.testing.assert_allclose(trained.get_latent_representation(indices=[3])[0], z[3], rtol=1e-5)
    beta = trained.get_topic_gene_matrix()
    assert beta.shape == (k, g) and list(beta.columns) == list(trained.adata.var_names)
    top = trained.get_top_genes(5)
    assert top.shape == (5, k)
    first = trained.topic_names[0]
    assert top.loc[0, first] == beta.loc[first].idxmax()
    assert trained.get_gene_embeddings().shape == (g, 16)
    assert trained.get_topic_embeddings().shape == (k, 16)


def test_latent_is_deterministic_in_eval(trained):
    np.testing.assert_array_equal(
        trained.get_latent_representation(), trained.get_latent_representation()
    )


def test_loss_falls(trained):
    loss = trained.history["train_loss"]["train_loss"].to_numpy()
    assert loss[-5:].mean() < loss[:5].mean() - 0.05


def test_kl_weight_follows_schedule(trained):
    kl = np.array(trained.kl_recorder.weights)
    steps = len(kl)
    assert steps == 40 * 3 == trained.trainer.global_step
    warmup = round(steps / 3)
    expected = np.minimum(np.arange(steps) / warmup, 1.0) * 1e-7
    np.testing.assert_allclose(kl, expected, rtol=1e-4, atol=1e-14)


def test_lr_decays_per_step(trained):
    optimizer = trained.trainer.optimizers[0]
    steps = trained.trainer.global_step
    assert optimizer.param_groups[0]["lr"] == pytest.approx(5e-3 * np.exp(-6e-5 * steps))


def test_clusters_follow_cell_types(sim_adata):
    """Leiden on the latent finds the cell types, over three seeds (one seed of a model this
    small, 120 steps on 600 cells, is an anecdote: its best ARI ranges 0.78-1.0)."""
    from scetm_mnn import tl

    best = []
    for seed in (0, 1, 2):
        scvi.settings.seed = seed
        adata = _setup(sim_adata.copy(), batch_key="batch")
        model = BatchCorrectedSCETM(adata, n_topics=8, n_emb=16)
        model.train(max_epochs=40, batch_size=256, **FAST)
        adata.obsm["X_etm"] = model.get_latent_representation()
        sweep = tl.leiden_sweep(
            adata, "X_etm", "cell_type", "batch", resolutions=(0.05, 0.1, 0.2, 0.4, 0.8)
        )
        best.append(sweep["ARI"].max())
    assert np.mean(best) > 0.85 and min(best) > 0.7, best


def test_batch_bias_defaults(sim_adata):
    counts = _setup(sim_adata.copy(), batch_key="batch")
    assert BatchCorrectedSCETM(counts).module.batch_bias is not None
    single = _setup(sim_adata.copy())
    assert BatchCorrectedSCETM(single).module.batch_bias is None
    corrected = _setup(
        _with_log_layer(sim_adata.copy()), batch_key="batch", corrected_layer="mnn_corrected"
    )
    # the decoder reconstructs the counts, batch effects included, in both modes
    assert BatchCorrectedSCETM(corrected).module.batch_bias is not None
    assert BatchCorrectedSCETM(counts, batch_bias=False).module.batch_bias is None


def test_encoder_input_applies_to_counts_only(sim_adata):
    counts = _setup(sim_adata.copy(), batch_key="batch")
    assert BatchCorrectedSCETM(counts).module.encoder_input == "proportions"
    assert BatchCorrectedSCETM(counts, encoder_input="log").module.encoder_input == "log"
    corrected = _setup(
        _with_log_layer(sim_adata.copy()), batch_key="batch", corrected_layer="mnn_corrected"
    )
    with pytest.raises(ValueError, match="encoder_input applies to counts"):
        BatchCorrectedSCETM(corrected, encoder_input="proportions")


def test_corrected_layer_is_read_by_the_encoder_and_counts_are_the_target(sim_adata):
    adata = _setup(
        _with_log_layer(sim_adata.copy()),
        batch_key="batch",
        corrected_layer="mnn_corrected",
    )
    model = BatchCorrectedSCETM(adata, n_topics=5, n_emb=8)
    model.train(max_epochs=3, batch_size=300, **FAST)
    assert np.isfinite(model.get_latent_representation()).all()
    assert model.trainer.lightning_module.max_kl_weight == 1e-7  # scETM's, in both modes
    # the encoder reads the layer: changing it changes the latent, the counts stay the target
    other = adata.copy()
    other.layers["mnn_corrected"] = other.layers["mnn_corrected"][::-1].copy()
    assert not np.allclose(
        model.get_latent_representation(other), model.get_latent_representation()
    )


def test_raw_counts_as_corrected_layer_are_refused(sim_adata):
    adata = sim_adata.copy()
    adata.layers["mnn_corrected"] = adata.X.copy()
    with pytest.raises(ValueError, match="raw counts"):
        BatchCorrectedSCETM.setup_anndata(
            adata, batch_key="batch", corrected_layer="mnn_corrected"
        )


def test_n_epochs_kl_warmup_is_honoured(sim_adata):
    adata = _setup(sim_adata.copy(), batch_key="batch")
    model = BatchCorrectedSCETM(adata, n_topics=4, n_emb=6)
    recorder = KLRecorder()
    model.train(
        max_epochs=6,
        batch_size=200,
        plan_kwargs={"n_epochs_kl_warmup": 2},
        callbacks=[recorder],
        **FAST,
    )
    kl = np.array(recorder.weights)
    assert len(kl) == 18
    np.testing.assert_allclose(kl, np.minimum(np.arange(18) / 6, 1.0) * 1e-7, atol=1e-14)


def test_seed_reproducibility(sim_adata):
    def run(seed):
        adata = _setup(sim_adata.copy(), batch_key="batch")
        model = BatchCorrectedSCETM(adata, n_topics=5, n_emb=8)
        model.train(max_epochs=4, batch_size=200, seed=seed, **FAST)
        return model.get_latent_representation()

    np.testing.assert_array_equal(run(7), run(7))
    assert not np.array_equal(run(7), run(8))


_FRESH = """
import numpy as np, scvi
from scetm_mnn.datasets import simulate
from scetm_mnn.model import BatchCorrectedSCETM
adata = simulate(n_cells=300, n_genes=50, random_state=0)
BatchCorrectedSCETM.setup_anndata(adata, batch_key="batch")
model = BatchCorrectedSCETM(adata, n_topics=4, n_emb=6)
model.train(max_epochs=3, batch_size=100, seed=3, enable_progress_bar=False)
np.save({path!r}, model.get_latent_representation())
"""


def test_two_fresh_processes_with_one_seed_agree(tmp_path):
    import subprocess
    import sys

    paths = [tmp_path / f"z{i}.npy" for i in range(2)]
    for path in paths:  # scvi.settings.seed stays unset: train(seed=) alone decides
        subprocess.run([sys.executable, "-c", _FRESH.format(path=str(path))], check=True)
    np.testing.assert_array_equal(np.load(paths[0]), np.load(paths[1]))


def test_save_load_round_trip_with_fixed_embeddings(sim_adata, tmp_path):
    adata = _setup(sim_adata.copy(), batch_key="batch")
    fixed = pd.DataFrame(
        np.random.default_rng(0).random((3, adata.n_vars)), columns=adata.var_names
    )
    model = BatchCorrectedSCETM(adata, n_topics=4, n_emb=6, fixed_gene_embeddings=fixed)
    model.train(max_epochs=2, batch_size=300, **FAST)
    model.save(tmp_path / "m", overwrite=True)
    loaded = BatchCorrectedSCETM.load(tmp_path / "m", adata=adata)
    np.testing.assert_array_equal(
        model.get_latent_representation(), loaded.get_latent_representation()
    )
    pd.testing.assert_frame_equal(model.get_topic_gene_matrix(), loaded.get_topic_gene_matrix())
    np.testing.assert_allclose(
        loaded.get_gene_embeddings().filter(like="fixed_").to_numpy(), fixed.to_numpy().T
    )
    other = sim_adata[:, ::-1].copy()
    with pytest.raises(ValueError, match="genes differ"):
        BatchCorrectedSCETM.load(tmp_path / "m", adata=other)


def test_fixed_embeddings_must_cover_genes(sim_adata):
    adata = _setup(sim_adata.copy())
    with pytest.raises(ValueError, match="lacks"):
        BatchCorrectedSCETM(adata, fixed_gene_embeddings=pd.DataFrame({"x": [1.0]}))


def _paired(sim_adata):
    adata = sim_adata.copy()
    batch = adata.obs["batch"].cat.codes.to_numpy()
    a, b = np.flatnonzero(batch == 0)[:50], np.flatnonzero(batch == 1)[:50]
    pairs = sparse.coo_matrix((np.ones(100), (np.r_[a, b], np.r_[b, a])), shape=(600, 600))
    adata.obsp["pairs"] = pairs.tocsr()
    return _setup(adata, batch_key="batch", mnn_pairs_key="pairs")


def test_mnn_term_trains_with_pairs(sim_adata):
    adata = _paired(sim_adata)
    model = BatchCorrectedSCETM(adata, n_topics=5, n_emb=8)
    model.train(max_epochs=3, batch_size=300, mnn_weight=1.0, **FAST)
    assert model.trainer.lightning_module.loss_kwargs["mnn_weight"] == 1.0
    assert "mnn_loss_train" in model.history
    default = BatchCorrectedSCETM(adata, n_topics=5, n_emb=8)
    default.train(max_epochs=1, batch_size=300, **FAST)  # registered pairs: on by default
    assert default.trainer.lightning_module.loss_kwargs["mnn_weight"] == DEFAULT_MNN_WEIGHT
    assert DEFAULT_MNN_WEIGHT == 1.0
    unpaired = BatchCorrectedSCETM(_setup(sim_adata.copy(), batch_key="batch"), n_topics=5)
    unpaired.train(max_epochs=1, batch_size=300, **FAST)  # no pairs: off
    assert "mnn_weight" not in unpaired.trainer.lightning_module.loss_kwargs
    model.train(max_epochs=1, batch_size=300, mnn_weight=0.0, **FAST)
    assert "mnn_weight" not in model.trainer.lightning_module.loss_kwargs
    plain = _setup(sim_adata.copy(), batch_key="batch")
    with pytest.raises(ValueError, match="mnn_pairs_key"):
        BatchCorrectedSCETM(plain).train(max_epochs=1, mnn_weight=1.0, **FAST)
    with pytest.raises(ValueError, match="mnn_pairs_key"):  # the plan's key is not ignored
        BatchCorrectedSCETM(plain).train(max_epochs=1, plan_kwargs={"mnn_weight": 1.0}, **FAST)


def test_mnn_weight_in_plan_kwargs_is_honoured_not_overwritten(sim_adata):
    model = BatchCorrectedSCETM(_paired(sim_adata), n_topics=5, n_emb=8)
    model.train(max_epochs=1, batch_size=300, plan_kwargs={"mnn_weight": 0.3}, **FAST)
    assert model.trainer.lightning_module.loss_kwargs["mnn_weight"] == 0.3
    with pytest.raises(ValueError, match="disagree"):
        model.train(max_epochs=1, mnn_weight=2.0, plan_kwargs={"mnn_weight": 0.3}, **FAST)


def test_default_max_epochs_gives_thousands_of_steps():
    assert default_max_epochs(2000, 2000) == 2000
    assert default_max_epochs(2142, 2000) == 1000
    assert default_max_epochs(100_000, 2000) == 40


# --------------------------------------------------------------- bad input
def test_non_integer_counts_name_the_layer(sim_adata):
    adata = sim_adata.copy()
    adata.layers["norm"] = adata.X * 0.5
    with pytest.raises(ValueError, match=r"layers\['norm'\].*non-integer"):
        BatchCorrectedSCETM.setup_anndata(adata, layer="norm")


def test_negative_counts(sim_adata):
    adata = sim_adata.copy()
    adata.X = adata.X.toarray()
    adata.X[0, 0] = -1
    with pytest.raises(ValueError, match=r"adata\.X.*negative"):
        BatchCorrectedSCETM.setup_anndata(adata)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_and_inf(sim_adata, bad):
    adata = sim_adata.copy()
    adata.X = adata.X.toarray()
    adata.X[1, 2] = bad
    with pytest.raises(ValueError, match="NaN or infinite"):
        BatchCorrectedSCETM.setup_anndata(adata)


def test_missing_batch_key_lists_columns(sim_adata):
    with pytest.raises(KeyError, match="Available columns: 'batch', 'cell_type'"):
        BatchCorrectedSCETM.setup_anndata(sim_adata.copy(), batch_key="donor")


def test_missing_layers(sim_adata):
    with pytest.raises(KeyError, match="Layer 'counts' not found"):
        BatchCorrectedSCETM.setup_anndata(sim_adata.copy(), layer="counts")
    with pytest.raises(KeyError, match="mnn_correct"):
        BatchCorrectedSCETM.setup_anndata(sim_adata.copy(), corrected_layer="mnn_corrected")
    with pytest.raises(KeyError, match="obsp"):
        BatchCorrectedSCETM.setup_anndata(sim_adata.copy(), mnn_pairs_key="pairs")


def test_callers_data_unchanged(sim_adata):
    adata = _with_log_layer(sim_adata.copy())
    x, layer, obs = adata.X.copy(), adata.layers["mnn_corrected"].copy(), adata.obs.copy()
    _setup(adata, batch_key="batch", corrected_layer="mnn_corrected")
    model = BatchCorrectedSCETM(adata, n_topics=4, n_emb=6)
    model.train(max_epochs=2, batch_size=300, **FAST)
    model.get_latent_representation()
    assert (adata.X != x).nnz == 0
    np.testing.assert_array_equal(adata.layers["mnn_corrected"], layer)
    pd.testing.assert_frame_equal(adata.obs[obs.columns], obs)
