"""``scetm_mnn.pp.MNNCorrector``: fit/transform, new batches, genes, save/load."""

from __future__ import annotations

import functools
import json
import warnings

import anndata as ad
import numpy as np
import pytest
import torch

import scetm_mnn as sm
from scetm_mnn import pp

KEY = "mnn_corrected"
QUICK = {"max_epochs": 10, "pairs_per_epoch": 256, "search_rounds": 3}
NEW = "batch_2"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data():
    """600 preprocessed cells × 150 genes in 3 batches; batch_2 is the new one."""
    adata = sm.datasets.simulate(n_cells=600, n_genes=150, n_batches=3, random_state=3)
    pp.preprocess(adata, n_top_genes=150, batch_key="batch")
    is_new = (adata.obs["batch"] == NEW).to_numpy()
    return adata, adata[~is_new].copy(), adata[is_new].copy()


@pytest.fixture(scope="module")
def fitted(data):
    """A corrector fitted on batches 0 and 1, and the reference it wrote."""
    _, reference, _ = data
    out, corrector = pp.mnn_correct(reference, "batch", copy=True, return_corrector=True, **QUICK)
    return corrector, out


@pytest.fixture(scope="module")
def query_out(fitted, data):
    return fitted[0].transform(data[2], copy=True)


def centroid_gap(z, obs, a, b) -> float:
    """Mean distance between the centroids of batches ``a`` and ``b`` of each cell type."""
    gaps = []
    for cell_type in obs["cell_type"].unique():
        of_type = (obs["cell_type"] == cell_type).to_numpy()
        in_a, in_b = of_type & obs["batch"].isin(a).to_numpy(), of_type & (obs["batch"] == b)
        if in_a.sum() and in_b.sum():
            gaps.append(np.linalg.norm(z[in_a].mean(axis=0) - z[in_b.to_numpy()].mean(axis=0)))
    return float(np.mean(gaps))


# --- the object and the wrapper ---------------------------------------------------------


def test_wrapper_is_fit_transform(fitted, data):
    corrector, out = fitted
    assert corrector.is_fitted and corrector.reference_batches_ == ["batch_0", "batch_1"]
    assert corrector.genes_ == list(data[1].var_names)
    assert set(out.uns[KEY]) == {"params", "pair_counts", "n_pairs", "history", "timing"}
    json.dumps(out.uns[KEY])  # uns holds no tensors
    adata = data[1].copy()  # in place, the same seed: the same output
    again = pp.mnn_correct(adata, "batch", return_corrector=True, **QUICK)
    assert isinstance(again, pp.MNNCorrector) and again is not corrector
    for attr, key in [("layers", KEY), ("obsm", "X_" + KEY), ("obsm", KEY + "_shift")]:
        np.testing.assert_array_equal(getattr(adata, attr)[key], getattr(out, attr)[key])
    assert adata.uns[KEY]["history"] == out.uns[KEY]["history"]


def test_wrapper_signature_mirrors_the_class():
    import inspect
    import re

    wrapper = inspect.signature(pp.mnn_correct).parameters
    corrector = inspect.signature(pp.MNNCorrector).parameters
    for name, parameter in corrector.items():
        if name not in ("adapter", "adapter_ridge"):
            assert wrapper[name].default == parameter.default, name
            assert wrapper[name].annotation == parameter.annotation, name
    own = {"adata", "key_added", "dense_layer", "copy", "return_corrector", "ckpt_path", "resume"}
    assert set(wrapper) - set(corrector) == own
    for obj in (pp.mnn_correct, pp.MNNCorrector):  # every parameter documented
        for name in inspect.signature(obj).parameters:
            assert re.search(rf"^ *{name}$", obj.__doc__, re.MULTILINE), (obj, name)
    with pytest.raises(TypeError, match="unexpected keyword argument 'adapter'"):
        pp.mnn_correct(None, "batch", adapter="shift")  # transform's, not the wrapper's


def test_reference_cells_get_the_fit_transform_output(fitted, data):
    corrector, out = fitted
    again = corrector.transform(data[1], copy=True)
    np.testing.assert_array_equal(again.layers[KEY], out.layers[KEY])
    np.testing.assert_array_equal(again.obsm["X_" + KEY], out.obsm["X_" + KEY])
    assert again.uns[KEY]["query_batches"] == [] and again.uns[KEY]["n_pairs"] == 0
    mixed = corrector.transform(data[0], copy=True)  # reference and new cells together
    is_new = (data[0].obs["batch"] == NEW).to_numpy()
    np.testing.assert_allclose(mixed.layers[KEY][~is_new], out.layers[KEY], atol=1e-6)
    assert mixed.uns[KEY]["query_batches"] == [NEW]


def test_transform_is_repeatable_and_leaves_input_alone(fitted, data, query_out):
    corrector, _ = fitted
    query = data[2]
    before = query.X.copy()
    second = corrector.transform(query, copy=True)
    np.testing.assert_array_equal(second.layers[KEY], query_out.layers[KEY])
    assert KEY not in query.layers and (query.X != before).nnz == 0
    assert "mnn_corrected_pairs" not in query_out.obsp
    assert query_out.varm[KEY + "_basis"].shape == (query.n_vars, 50)


@pytest.mark.parametrize("adapter", ["mixture", "local"])
def test_new_batch_is_aligned_to_the_reference(fitted, data, query_out, adapter):
    """The mapping brings the new batch's cell types onto the reference's: the gap between
    their centroids shrinks well below the network-only correction's."""
    _, out = fitted
    query = data[2]
    plain = fitted[0].transform(query, copy=True, adapter="none")
    mapped = (
        query_out
        if adapter == "mixture"
        else fitted[0].transform(query, copy=True, adapter=adapter)
    )
    info = mapped.uns[KEY]
    assert info["query_batches"] == [NEW] and info["adapter"] == adapter
    if adapter == "local":  # fitted on MNN pairs
        assert info["adapters"][NEW]["n_pairs"] > 50
        assert sum(info["adapters"][NEW]["pair_counts"].values()) == info["n_pairs"]
    else:  # no pair search: the reference's soft clusters
        assert info["adapters"][NEW]["n_pairs"] == 0 and info["adapters"][NEW]["n_clusters"] >= 10
    obs = data[0].obs
    is_new = (obs["batch"] == NEW).to_numpy()
    ref = ["batch_0", "batch_1"]

    def gap(query_latent):
        z = np.empty((obs.shape[0], query_latent.shape[1]), dtype=np.float32)
        z[~is_new], z[is_new] = out.obsm["X_" + KEY], query_latent
        return centroid_gap(z, obs, ref, NEW)

    with_adapter, without = gap(mapped.obsm["X_" + KEY]), gap(plain.obsm["X_" + KEY])
    assert plain.uns[KEY]["adapters"][NEW]["shift_norm"] == 0
    assert with_adapter < 0.5 * without, (with_adapter, without)


def test_mixture_mapping_labels_the_new_batch_by_its_reference_types(fitted, data, query_out):
    """Each new cell's nearest corrected reference cells are of its type; the reference
    cells' outputs are what the fit gave them."""
    from sklearn.neighbors import KNeighborsClassifier

    _, out = fitted
    knn = KNeighborsClassifier(15).fit(out.obsm["X_" + KEY], out.obs["cell_type"].astype(str))
    predicted = knn.predict(query_out.obsm["X_" + KEY])
    assert (predicted == data[2].obs["cell_type"].astype(str).to_numpy()).mean() >= 0.9


def test_mixture_on_a_corrector_without_shifts_falls_back_to_local(fitted, data, query_out):
    """A corrector saved before the reference's shifts were kept: warned, ``"local"``."""
    import dataclasses

    corrector, _ = fitted
    old = pp.MNNCorrector.__new__(pp.MNNCorrector)
    old.__dict__.update(corrector.__dict__)
    old._fitted = dataclasses.replace(corrector._fitted, reference_shift=None)
    with pytest.warns(UserWarning, match="adapter='local'"):
        got = old.transform(data[2], copy=True)
    expected = corrector.transform(data[2], copy=True, adapter="local")
    np.testing.assert_array_equal(got.obsm["X_" + KEY], expected.obsm["X_" + KEY])


def test_low_rank_form_is_exact_and_writes_to_h5ad(fitted, data, query_out, tmp_path):
    corrector, _ = fitted
    low = corrector.transform(data[2], copy=True, dense_layer=False)
    assert KEY not in low.layers
    dense = np.vstack([block for _, block in pp.corrected_expression(low, KEY)])
    np.testing.assert_allclose(dense, query_out.layers[KEY], atol=1e-5)
    low.write_h5ad(tmp_path / "query.h5ad")
    json.dumps(low.uns[KEY])


# --- genes ------------------------------------------------------------------------------


def test_gene_order_and_extra_genes(fitted, data, query_out):
    corrector, _ = fitted
    query = data[2]
    reordered = corrector.transform(query[:, ::-1].copy(), copy=True)
    np.testing.assert_allclose(reordered.layers[KEY][:, ::-1], query_out.layers[KEY], atol=1e-5)
    extra = sm.datasets.simulate(n_cells=query.n_obs, n_genes=5, random_state=1)
    wider = type(query)(
        X=np.hstack([query.X.toarray(), np.log1p(extra.X.toarray())]),
        obs=query.obs,
        var={"gene": [*query.var_names, *(f"extra_{i}" for i in range(5))]},
    )
    wider.var_names = wider.var["gene"].astype(str)
    out = corrector.transform(wider, copy=True)
    np.testing.assert_allclose(out.layers[KEY][:, :-5], query_out.layers[KEY], atol=1e-5)
    np.testing.assert_array_equal(out.layers[KEY][:, -5:], wider.X[:, -5:])  # left alone
    assert (out.varm[KEY + "_basis"][-5:] == 0).all()


def test_missing_genes(fitted, data):
    corrector, _ = fitted
    query = data[2]
    few = query[:, 5:].copy()  # 5 of 150 genes missing
    with pytest.warns(UserWarning, match=r"lacks 5 of the corrector's 150 genes"):
        out = corrector.transform(few, copy=True)
    assert out.layers[KEY].shape == few.shape and np.isfinite(out.layers[KEY]).all()
    many = query[:, 40:].copy()
    with pytest.raises(ValueError, match=r"lacks 40 of the corrector's 150 genes.*max_missing"):
        corrector.transform(many)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        corrector.transform(many, max_missing_genes=0.3, copy=True)
    assert KEY not in many.layers
    duplicated = query.copy()
    duplicated.var_names = [query.var_names[0], *query.var_names[:-1]]
    with pytest.raises(ValueError, match="var_names_make_unique"):
        corrector.transform(duplicated)


# --- batch names ------------------------------------------------------------------------


def test_known_batch_names(fitted, data):
    corrector, out = fitted
    with pytest.raises(ValueError, match=r"\['batch_0', 'batch_1'\].*names of reference"):
        corrector.transform(data[0], known_batches="raise")
    as_query = corrector.transform(data[1], copy=True, known_batches="query")
    assert as_query.uns[KEY]["query_batches"] == ["batch_0", "batch_1"]
    assert not np.allclose(as_query.obsm[KEY + "_shift"], out.obsm[KEY + "_shift"])
    renamed = data[2].copy()
    renamed.obs["batch"] = "batch_0"  # a new donor that happens to share a name
    by_name = corrector.transform(renamed, copy=True)
    assert by_name.uns[KEY]["query_batches"] == []


def test_query_without_pairs_warns(fitted, data):
    corrector, _ = fitted
    tiny = data[2][:2].copy()
    with pytest.warns(UserWarning, match="No MNN pairs were found between the query batch"):
        out = corrector.transform(tiny, copy=True, adapter="local")
    assert out.uns[KEY]["adapters"][NEW]["n_pairs"] == 0


def test_bad_calls(fitted, data):
    corrector, _ = fitted
    with pytest.raises(ValueError, match="not fitted"):
        pp.MNNCorrector("batch").transform(data[2])
    with pytest.raises(ValueError, match="known_batches"):
        corrector.transform(data[2], known_batches="new")
    with pytest.raises(ValueError, match="max_missing_genes"):
        corrector.transform(data[2], max_missing_genes=1.5)
    with pytest.raises(ValueError, match="adapter"):
        pp.MNNCorrector("batch", adapter="mlp")
    no_batch = data[2].copy()
    del no_batch.obs["batch"]
    with pytest.raises(KeyError, match="Available columns"):
        corrector.transform(no_batch)


# --- saving -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"latent": "autoencoder"}, {"network": "bottleneck", "n_hidden": 32}],
    ids=["residual", "autoencoder", "bottleneck"],
)
def test_save_load_round_trip(data, tmp_path, kwargs, monkeypatch):
    from scetm_mnn.pp import _fitting, _latent

    # The encoder's layout is what is saved; 20 pretraining steps instead of 1000 suffice.
    short = functools.partial(_latent.fit_autoencoder, n_steps=20)
    monkeypatch.setattr(_fitting, "fit_autoencoder", short)
    reference = data[1]
    corrector = pp.MNNCorrector("batch", n_comps=10, **kwargs, **QUICK).fit(reference)
    assert corrector.params["network"] == kwargs.get("network", "residual")  # auto, resolved
    expected = corrector.transform(data[0], copy=True)
    path = corrector.save(tmp_path / "corrector.pt")
    assert path.with_suffix(".json").is_file()
    torch.load(path, weights_only=True)  # tensors only
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["genes"] == corrector.genes_ and meta["reference_batches"] == [
        "batch_0",
        "batch_1",
    ]
    assert meta["scetm_mnn_version"] == sm.__version__
    loaded = pp.MNNCorrector.load(path)
    assert repr(loaded) == repr(corrector)
    got = loaded.transform(data[0], copy=True)
    for attr, key in [("layers", KEY), ("obsm", "X_" + KEY), ("obsm", KEY + "_shift")]:
        np.testing.assert_array_equal(getattr(got, attr)[key], getattr(expected, attr)[key])
    assert got.uns[KEY]["adapters"] == expected.uns[KEY]["adapters"]


def test_save_in_a_directory_and_refusals(fitted, tmp_path):
    corrector, _ = fitted
    assert corrector.save(tmp_path / "model").name == "corrector.pt"
    with pytest.raises(FileExistsError, match="overwrite=True"):
        corrector.save(tmp_path / "model")
    corrector.save(tmp_path / "model", overwrite=True)
    assert pp.MNNCorrector.load(tmp_path / "model").genes_ == corrector.genes_
    sidecar = tmp_path / "model" / "corrector.json"
    meta = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**meta, "fit_id": "another fit"}))
    with pytest.raises(ValueError, match="not saved together"):
        pp.MNNCorrector.load(tmp_path / "model")
    sidecar.write_text(json.dumps({**meta, "format": 99}))
    with pytest.raises(ValueError, match="layout 99"):
        pp.MNNCorrector.load(tmp_path / "model")
    sidecar.unlink()
    with pytest.raises(FileNotFoundError, match="json sidecar"):
        pp.MNNCorrector.load(tmp_path / "model")
    with pytest.raises(ValueError, match="not fitted"):
        pp.MNNCorrector("batch").save(tmp_path / "unfitted")


def test_backed_query(fitted, data, query_out, tmp_path):
    corrector, _ = fitted
    path = tmp_path / "query.h5ad"
    data[2].write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    with pytest.raises(ValueError, match="copy=True would load"):
        corrector.transform(backed, copy=True)
    corrector.transform(backed, dense_layer=False)
    np.testing.assert_allclose(
        backed.obsm["X_" + KEY], query_out.obsm["X_" + KEY], rtol=1e-5, atol=1e-5
    )
    backed.file.close()


def test_the_model_maps_a_transformed_query(fitted, data):
    """``load_query_data`` in corrected mode reads the layer ``transform`` wrote (here in
    its low-rank form only)."""
    from scetm_mnn.model import BatchCorrectedSCETM

    corrector, out = fitted
    reference = out.copy()
    BatchCorrectedSCETM.setup_anndata(
        reference, layer="counts", batch_key="batch", corrected_layer=KEY
    )
    model = BatchCorrectedSCETM(reference, n_topics=4, n_emb=8)
    model.train(max_epochs=1, enable_progress_bar=False)
    query = corrector.transform(data[2], copy=True, dense_layer=False)
    query_model = BatchCorrectedSCETM.load_query_data(query, model)
    query_model.train(max_epochs=1, enable_progress_bar=False)
    latent = query_model.get_latent_representation()
    assert latent.shape == (query.n_obs, 4) and np.isfinite(latent).all()
