"""Helpers shared by the metrics and plots: embedding look-up and light copies."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
from scipy import sparse

from .._validation import check_obs_key


def get_rep(adata: ad.AnnData, use_rep: str, positions: np.ndarray | None = None) -> np.ndarray:
    """Return ``adata.obsm[use_rep]`` (or ``adata.X`` for ``"X"``) as a dense float array.

    With ``positions``, only those rows, taken before anything is made dense.

    Raises
    ------
    KeyError
        When ``use_rep`` is neither ``"X"`` nor a key of ``adata.obsm``.
    """
    if use_rep == "X":
        x = adata.X
    elif use_rep in adata.obsm:
        x = adata.obsm[use_rep]
    else:
        available = ", ".join(map(repr, adata.obsm.keys())) or "none"
        raise KeyError(
            f"use_rep={use_rep!r} is not a key of adata.obsm (available: {available}). "
            "Pass the obsm key of the embedding to evaluate, or 'X'."
        )
    if positions is not None:
        x = x.iloc[positions] if isinstance(x, pd.DataFrame) else x[positions]
    x = x.toarray() if hasattr(x, "toarray") else np.asarray(x)
    return x.astype(np.float32, copy=False)


def light_copy(
    adata: ad.AnnData,
    use_rep: str,
    obs_keys: dict[str, str],
    positions: np.ndarray | None = None,
) -> ad.AnnData:
    """Make a new AnnData holding only the embedding and the needed ``obs`` columns.

    Parameters
    ----------
    adata
        The caller's AnnData; it is never modified.
    use_rep
        The embedding, stored under the same key (``"X"`` becomes ``obsm["X"]``).
    obs_keys
        Maps each ``obs`` column to copy to the argument name used in error messages,
        e.g. ``{"cell_type": "label_key"}``.
    positions
        Only these cells (e.g. a :func:`~scetm_mnn.tl.stratified_subsample`); default all.
    """
    for key, what in obs_keys.items():
        check_obs_key(adata, key, what)
    obs = adata.obs[list(dict.fromkeys(obs_keys))]
    obs = (obs if positions is None else obs.iloc[positions]).copy()
    for key in obs.columns:
        obs[key] = obs[key].astype(str).astype("category")
    return ad.AnnData(obs=obs, obsm={use_rep: get_rep(adata, use_rep, positions)})


#: From this many cells on, scanpy's kNN is pynndescent's (below, an exact brute-force one).
_APPROXIMATE_FROM = 8192


class _CSRMatrixKNN:
    """scanpy's default kNN for many cells, its graph as a ``scipy.sparse.csr_matrix``.

    The search is pynndescent's with UMAP's ``n_trees`` and ``n_iters``, as in scanpy.
    scanpy 1.11 reads the graph with ``getnnz``, which the ``csr_array`` that pynndescent
    0.7 returns lacks under scipy 1.17, so :func:`scanpy.pp.neighbors` fails on 8,192 cells
    or more. The same search, converted, gives scanpy's own result.
    """

    def __init__(self, n_obs: int, n_neighbors: int, random_state: int) -> None:
        from pynndescent import PyNNDescentTransformer

        self._knn = PyNNDescentTransformer(
            n_neighbors=n_neighbors,
            metric="euclidean",
            random_state=random_state,
            n_jobs=sc.settings.n_jobs,
            n_trees=min(64, 5 + round(n_obs**0.5 / 20.0)),
            n_iters=max(5, round(np.log2(n_obs))),
        )

    def get_params(self, deep: bool = True) -> dict:
        return self._knn.get_params(deep)

    def fit(self, x, y=None):
        self._knn.fit(x)
        return self

    def transform(self, x):
        return sparse.csr_matrix(self._knn.transform(x))

    def fit_transform(self, x, y=None):
        return sparse.csr_matrix(self._knn.fit_transform(x))


def neighbors(adata: ad.AnnData, use_rep: str, n_neighbors: int = 15, random_state: int = 0):
    """:func:`scanpy.pp.neighbors` on ``use_rep``, on 8,192 cells or more too."""
    transformer = None
    if adata.n_obs >= _APPROXIMATE_FROM:
        transformer = _CSRMatrixKNN(adata.n_obs, n_neighbors, random_state)
    sc.pp.neighbors(
        adata,
        n_neighbors=n_neighbors,
        use_rep=use_rep,
        random_state=random_state,
        transformer=transformer,
    )


def neighbors_copy(
    adata: ad.AnnData,
    use_rep: str,
    obs_keys: dict[str, str],
    n_neighbors: int = 15,
    random_state: int = 0,
    positions: np.ndarray | None = None,
) -> ad.AnnData:
    """:func:`light_copy` with a kNN graph from :func:`scanpy.pp.neighbors` on ``use_rep``."""
    tmp = light_copy(adata, use_rep, obs_keys, positions)
    neighbors(tmp, use_rep, n_neighbors=n_neighbors, random_state=random_state)
    return tmp


def leiden_labels(adata: ad.AnnData, resolution: float, random_state: int = 0) -> np.ndarray:
    """Leiden clusters (igraph, 2 iterations, seeded) on the neighbour graph of ``adata``.

    ``adata`` must be a working copy: the labels are written to ``obs["_leiden"]`` too.
    """
    sc.tl.leiden(
        adata,
        resolution=resolution,
        flavor="igraph",
        n_iterations=2,
        directed=False,
        random_state=random_state,
        key_added="_leiden",
    )
    return adata.obs["_leiden"].to_numpy()
