"""The peer methods of the benchmarks: uncorrected PCA, Harmony, Scanorama, BBKNN, scVI, scETM.

Each peer takes the preprocessed AnnData (raw counts in ``layers["counts"]``, log-normalized
HVGs in ``X``, ``obs["batch"]``) and a seed, and returns ``(embedding, wall seconds)``; a
graph method (BBKNN) returns ``(_common.Graph, wall seconds)`` instead.

- ``pca``: :func:`scanpy.pp.pca`, 50 components, ``random_state=seed``.
- ``harmony``: harmonypy's ``run_harmony`` (defaults, ``random_state=seed``) on that PCA
  (stored in ``obsm["X_pca"]`` by :func:`pca`, or computed here); the time counts Harmony
  only.
- ``scanorama``: Scanorama 1.7's ``scanorama.integrate`` on the log-normalized HVGs split by
  batch (one matrix per batch, in the batches' sorted order, the same 2000 genes), every
  default (``dimred=100``, ``knn=20``, ``sigma=15``, ``alpha=0.1``, approximate (Annoy)
  matching, no extra HVG filter), ``seed=seed`` (it seeds ``np.random`` and ``random``);
  Scanorama L2-normalizes each cell and reduces to 100 dimensions itself. Its integrated
  100-dimensional embedding, back in the AnnData's cell order, is the embedding. The time
  counts ``integrate`` only.
- ``bbknn``: BBKNN 1.6's ``bbknn.matrix.bbknn`` (what ``bbknn.bbknn`` runs on an AnnData) on
  the same 50-component PCA as Harmony, every default: 3 neighbours within each batch
  (12 per cell on the 4 human batches, 6 on the 2 mouse ones, the cell itself among them),
  Annoy (the default ``computation``; 10 trees, Euclidean), UMAP connectivities, trimmed to
  10 × the neighbours. Annoy takes no seed from BBKNN, but its index is deterministic (its
  own fixed seed), so the graph is the same for every seed. It returns a graph, not an
  embedding: ``_common.run_methods`` stores it in ``obsp`` and ``_common.evaluate`` scores
  it on that graph: the Leiden sweep on its connectivities (the same resolutions, igraph
  Leiden, 2 iterations, the run's seed, ARI/NMI/bARI), the kNN batch entropy on each cell's
  BBKNN neighbours (its row of the distances; batch-balanced by construction, so it is a
  constant of the number of batches, 0.990 for 4 and 0.971 for 2, not a measure of mixing
  comparable with the embeddings' 30-neighbour entropy), and scib-metrics on a
  ``NeighborsResults`` of those neighbours whose connectivities are BBKNN's: Leiden
  NMI/ARI, cLISI, iLISI, kBET per label and graph connectivity, called as the Benchmarker
  calls them, on BBKNN's neighbourhood for every neighbour count (LISI's perplexity is a
  third of it, 4 or 2, instead of 30); the metrics that need an embedding (isolated
  labels, label silhouette, BRAS, PCR comparison) are NaN, and the Bio / Batch aggregates
  are means over the rest. The time counts ``bbknn.matrix.bbknn`` only (the first call in
  a process includes numba's compilation of UMAP's fuzzy simplicial set, about 3 s).
- ``scvi``: scvi-tools ``SCVI`` on the counts with ``batch_key="batch"`` and every default
  (n_latent=10, ``max_epochs=min(400, round(400 * 20000 / n_cells))``, batch size 128).
- ``scetm``: scETM 0.5.0 from PyPI in ``.venv-scetm`` through ``_scetm_runner.py``, defaults
  (K=50, L=400, batch bias), batch size 2000 and :data:`SCETM_EPOCHS` epochs (half the
  12000 of scETM's README); returns δ. The time is the whole subprocess (start, data
  loading, training, δ). Its θ and topic-gene matrix ``α · ρ`` go to
  :data:`_common.TOPICS` for the topic measures.
- ``amortized_lda``: scvi-tools ``AmortizedLDA`` (K = 50) on the counts, 300 epochs of 256
  cells; its topic proportions are the embedding, and they and ``get_feature_by_topic``
  go to :data:`_common.TOPICS`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import subprocess
import sys
import tempfile
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
from _common import BATCH_KEY, BENCH_DIR, REPO_DIR, TOPICS, Graph, timed

logger = logging.getLogger(__name__)

N_PCS = 50
SCETM_PYTHON = REPO_DIR / ".venv-scetm" / "bin" / "python"
SCETM_RUNNER = BENCH_DIR / "_scetm_runner.py"
#: scETM's README trains the (mouse) pancreas data for 12000 epochs with batch size 2000
#: (one epoch is max(n_cells / 2000, 1) optimizer steps). We train half as long, 6000 epochs
#: (6000 steps on mouse, 6426 on human), to keep the CPU run under half an hour per data set.
SCETM_EPOCHS = 6000
SCETM_BATCH_SIZE = 2000
#: Torch threads of scVI and scETM. On a shared 2-core machine, 2 threads are up to 8×
#: slower than 1 (spinning OpenMP workers); ``pancreas.py --threads`` changes it.
THREADS = {"n": 1}


def _pca_embedding(adata: ad.AnnData, seed: int) -> np.ndarray:
    return sc.pp.pca(adata.X, n_comps=N_PCS, random_state=seed, return_info=False)


def pca(adata: ad.AnnData, seed: int = 0) -> tuple[np.ndarray, float]:
    """Uncorrected PCA (50 components) of the log-normalized HVGs."""
    emb, sec = timed(lambda: _pca_embedding(adata, seed))
    adata.obsm["X_pca"] = emb
    return emb, sec


def harmony(adata: ad.AnnData, seed: int = 0) -> tuple[np.ndarray, float]:
    """Harmony (harmonypy, defaults) on the 50-component PCA, corrected for ``batch``."""
    import harmonypy

    x_pca = adata.obsm["X_pca"] if "X_pca" in adata.obsm else _pca_embedding(adata, seed)
    meta = adata.obs[[BATCH_KEY]].astype(str)

    def run() -> np.ndarray:
        z = np.asarray(
            harmonypy.run_harmony(
                np.asarray(x_pca, dtype=np.float64),
                meta,
                BATCH_KEY,
                random_state=seed,
                verbose=False,
            ).Z_corr
        )
        return z if z.shape[0] == adata.n_obs else z.T

    return timed(run)


def scanorama(adata: ad.AnnData, seed: int = 0) -> tuple[np.ndarray, float]:
    """Scanorama (``scanorama.integrate``, defaults, ``seed=seed``) on the per-batch HVGs."""
    import scanorama as scanorama_lib

    batches = adata.obs[BATCH_KEY].astype("category")
    positions = [np.flatnonzero(batches == b) for b in batches.cat.categories]
    x = adata.X.tocsr() if hasattr(adata.X, "tocsr") else np.asarray(adata.X)
    datasets = [x[p] for p in positions]
    genes = [adata.var_names.to_numpy() for _ in positions]

    def run() -> np.ndarray:
        with contextlib.redirect_stdout(sys.stderr):  # its gene count, past verbose=0
            integrated, _ = scanorama_lib.integrate(datasets, genes, seed=seed, verbose=0)
        return np.vstack(integrated)

    emb, sec = timed(run)
    order = np.empty(adata.n_obs, dtype=np.int64)
    order[np.concatenate(positions)] = np.arange(adata.n_obs)
    return emb[order], sec


def bbknn(adata: ad.AnnData, seed: int = 0) -> tuple[Graph, float]:
    """BBKNN (``bbknn.matrix.bbknn``, defaults) on the 50-component PCA; returns its graph."""
    import bbknn as bbknn_lib

    x_pca = adata.obsm["X_pca"] if "X_pca" in adata.obsm else _pca_embedding(adata, seed)
    batches = adata.obs[BATCH_KEY].astype(str).to_numpy()

    def run() -> Graph:
        distances, connectivities, _ = bbknn_lib.matrix.bbknn(np.asarray(x_pca), batches)
        return Graph(connectivities=connectivities.tocsr(), distances=distances.tocsr())

    return timed(run)


def scvi(adata: ad.AnnData, seed: int = 0) -> tuple[np.ndarray, float]:
    """scVI (scvi-tools defaults, n_latent=10) on ``layers["counts"]`` with the batch key."""
    import scvi as scvi_tools
    import torch

    def run() -> np.ndarray:
        scvi_tools.settings.seed = seed
        torch.set_num_threads(THREADS["n"])
        data = ad.AnnData(
            X=adata.layers["counts"].copy(), obs=adata.obs[[BATCH_KEY]].copy(), var=adata.var[[]]
        )
        scvi_tools.model.SCVI.setup_anndata(data, batch_key=BATCH_KEY)
        model = scvi_tools.model.SCVI(data)
        model.train(enable_progress_bar=False, accelerator="cpu")
        return model.get_latent_representation()

    return timed(run)


def scetm(
    adata: ad.AnnData,
    seed: int = 0,
    n_epochs: int = SCETM_EPOCHS,
    batch_size: int = SCETM_BATCH_SIZE,
) -> tuple[np.ndarray, float]:
    """The original scETM 0.5.0 (in ``.venv-scetm``); returns its δ embedding."""
    if not SCETM_PYTHON.exists():
        raise FileNotFoundError(f"{SCETM_PYTHON} is missing: run `make bench-env` first.")
    with tempfile.TemporaryDirectory(prefix="scetm_peer_") as tmp:
        path, out = Path(tmp) / "data.h5ad", Path(tmp) / "delta.npy"
        data = ad.AnnData(
            X=adata.layers["counts"].copy(), obs=adata.obs[[BATCH_KEY]].copy(), var=adata.var[[]]
        )
        data.obs["batch_indices"] = data.obs[BATCH_KEY].astype("category").cat.codes.astype(int)
        data.write_h5ad(path)
        cmd = [
            str(SCETM_PYTHON), str(SCETM_RUNNER),
            "--input", str(path), "--output", str(out),
            "--n-epochs", str(n_epochs), "--batch-size", str(batch_size),
            "--seed", str(seed), "--threads", str(THREADS["n"]),
        ]  # fmt: skip

        def run() -> np.ndarray:
            proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"scETM runner failed:\n{proc.stderr[-4000:]}")
            return np.load(out)

        emb, sec = timed(run)
        info = json.loads(out.with_suffix(".json").read_text())
        theta = np.load(out.with_name(out.stem + "_theta.npy"))
        beta = np.load(out.with_name(out.stem + "_beta.npy"))
        TOPICS["scetm"] = (theta, pd.DataFrame(beta, columns=adata.var_names))
    logger.info(
        "scETM: %d steps, %.1f ms/step, %.0f s training", info["steps"], info["ms_per_step"],
        info["train_seconds"],
    )  # fmt: skip
    SCETM_INFO.update(info)
    return emb, sec


#: The last scETM runner's JSON (steps, ms/step, training seconds).
SCETM_INFO: dict = {}

LDA_TOPICS = 50
LDA_EPOCHS = 300
LDA_BATCH_SIZE = 256


def amortized_lda(adata: ad.AnnData, seed: int = 0) -> tuple[np.ndarray, float]:
    """scvi-tools ``AmortizedLDA`` (K = 50, 300 epochs of 256); returns θ."""
    import scvi as scvi_tools
    import torch

    def run() -> np.ndarray:
        scvi_tools.settings.seed = seed
        torch.set_num_threads(THREADS["n"])
        data = ad.AnnData(X=adata.layers["counts"].copy(), var=adata.var[[]])
        scvi_tools.model.AmortizedLDA.setup_anndata(data)
        model = scvi_tools.model.AmortizedLDA(data, n_topics=LDA_TOPICS)
        model.train(
            max_epochs=LDA_EPOCHS,
            batch_size=LDA_BATCH_SIZE,
            enable_progress_bar=False,
            accelerator="cpu",
        )
        theta = model.get_latent_representation().to_numpy()
        TOPICS["amortized_lda"] = (theta, model.get_feature_by_topic().T)
        return theta

    return timed(run)


#: The peers in the order they run (Harmony and BBKNN reuse the PCA).
PEERS = {
    "pca": pca,
    "harmony": harmony,
    "scanorama": scanorama,
    "bbknn": bbknn,
    "scvi": scvi,
    "scetm": scetm,
    "amortized_lda": amortized_lda,
}
