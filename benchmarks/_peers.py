"""The peer methods of the benchmarks: uncorrected PCA, Harmony, scVI and the original scETM.

Each peer takes the preprocessed AnnData (raw counts in ``layers["counts"]``, log-normalized
HVGs in ``X``, ``obs["batch"]``) and a seed, and returns ``(embedding, wall seconds)``.

- ``pca``: :func:`scanpy.pp.pca`, 50 components, ``random_state=seed``.
- ``harmony``: harmonypy's ``run_harmony`` (defaults, ``random_state=seed``) on that PCA
  (stored in ``obsm["X_pca"]`` by :func:`pca`, or computed here); the time counts Harmony
  only.
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

import json
import logging
import subprocess
import tempfile
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
from _common import BATCH_KEY, BENCH_DIR, REPO_DIR, TOPICS, timed

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


#: The peers in the order they run (Harmony reuses the PCA).
PEERS = {
    "pca": pca,
    "harmony": harmony,
    "scvi": scvi,
    "scetm": scetm,
    "amortized_lda": amortized_lda,
}
