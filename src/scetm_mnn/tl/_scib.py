"""The scib-metrics benchmark (optional ``bench`` extra) on several embeddings."""

from __future__ import annotations

from typing import Literal

import anndata as ad
import numpy as np
import pandas as pd
from sklearn.neighbors import NearestNeighbors

from .._docstrings import shared_docstring
from ._utils import get_rep, light_copy

_INSTALL_HINT = 'pip install "scetm-mnn[bench]"'
_BIO_DEFAULTS = {"nmi_ari_cluster_labels_leiden": True, "nmi_ari_cluster_labels_kmeans": False}


def _import_scib():
    try:
        from scib_metrics.benchmark import BatchCorrection, Benchmarker, BioConservation
    except ImportError as err:
        raise ImportError(
            "scib_benchmark needs the optional scib-metrics package (and jax); install it "
            f"with: {_INSTALL_HINT}"
        ) from err
    return Benchmarker, BioConservation, BatchCorrection


def _exact_neighbors(n_jobs: int):
    """Return a Benchmarker ``neighbor_computer`` doing exact Euclidean kNN with sklearn."""
    from scib_metrics.nearest_neighbors import NeighborsResults

    def compute(x: np.ndarray, n_neighbors: int):
        nn = NearestNeighbors(n_neighbors=min(n_neighbors, x.shape[0]), n_jobs=n_jobs).fit(x)
        distances, indices = nn.kneighbors(x)  # the cell itself comes first, as scib expects
        return NeighborsResults(indices=indices, distances=distances)

    return compute


@shared_docstring
def scib_benchmark(
    adata: ad.AnnData,
    embeddings: list[str],
    label_key: str,
    batch_key: str,
    pre_integrated: str | None = None,
    n_jobs: int = 1,
    neighbors: Literal["exact", "pynndescent"] = "exact",
    bio_conservation: dict | None = None,
    batch_correction: dict | None = None,
) -> pd.DataFrame:
    """Run scib-metrics' :class:`~scib_metrics.benchmark.Benchmarker` on embeddings.

    By default, bio conservation uses isolated labels, Leiden NMI/ARI (instead of the
    default k-means ones, to match :func:`leiden_sweep`), label silhouette and cLISI; batch
    correction uses all of scib-metrics' defaults (BRAS, iLISI, kBET per label, graph
    connectivity, PCR comparison). Everything runs on a light copy, so ``adata`` is not
    modified.

    Parameters
    ----------
    adata
        Annotated data with the embeddings in ``obsm``.
    embeddings
        ``obsm`` keys of the embeddings to compare.
    label_key
        ``obs`` column with cell-type labels.
    batch_key
        ``obs`` column with batch labels.
    pre_integrated
        ``obsm`` key of an unintegrated embedding (e.g. ``"X_pca"``) for the PCR
        comparison. If ``None``, scib-metrics computes a PCA of ``adata.X``, which should
        then hold normalized, log-transformed data.
    n_jobs
        Threads of the neighbour search.
    neighbors
        ``"exact"`` (default): exact kNN with :class:`sklearn.neighbors.NearestNeighbors`,
        deterministic and free of pynndescent's numba compilation; ``"pynndescent"``:
        scib-metrics' approximate default, which scales better to large data.
        (kBET per label always uses pynndescent for its diffusion neighbours.)
    bio_conservation
        Overrides of the :class:`~scib_metrics.benchmark.BioConservation` fields, e.g.
        ``{"isolated_labels": False}`` (a metric name mapped to ``False``, ``True`` or
        its keyword arguments).
    batch_correction
        Overrides of the :class:`~scib_metrics.benchmark.BatchCorrection` fields, e.g.
        ``{"kbet_per_label": False}`` to skip the slowest metric.

    Returns
    -------
    ``Benchmarker.get_results(min_max_scale=False)``: one row per embedding plus a
    ``"Metric Type"`` row, one column per metric plus the ``Batch correction``,
    ``Bio conservation`` and ``Total`` aggregates.

    Raises
    ------
    ImportError
        When scib-metrics is not installed (``pip install "scetm-mnn[bench]"``).

    Examples
    --------
    Two embeddings of simulated cells, with the slowest metrics turned off (needs the
    ``bench`` extra):

    %(simulated_pca)s
    >>> adata.obsm["X_pca_5"] = adata.obsm["X_pca"][:, :5]
    >>> table = sm.tl.scib_benchmark(
    ...     adata,
    ...     ["X_pca", "X_pca_5"],
    ...     "cell_type",
    ...     "batch",
    ...     pre_integrated="X_pca",
    ...     bio_conservation={"isolated_labels": False, "clisi_knn": False},
    ...     batch_correction={"kbet_per_label": False, "ilisi_knn": False, "bras": False},
    ... )
    >>> table.index.tolist()
    ['X_pca', 'X_pca_5', 'Metric Type']
    >>> table.columns[-3:].tolist()
    ['Batch correction', 'Bio conservation', 'Total']
    """
    if not embeddings:
        raise ValueError("embeddings is empty; pass the obsm keys to benchmark.")
    if neighbors not in ("exact", "pynndescent"):
        raise ValueError(f"neighbors must be 'exact' or 'pynndescent', not {neighbors!r}.")
    benchmarker, bio_cls, batch_cls = _import_scib()
    tmp = light_copy(adata, embeddings[0], {label_key: "label_key", batch_key: "batch_key"})
    for key in [*embeddings[1:], *([pre_integrated] if pre_integrated else [])]:
        tmp.obsm[key] = get_rep(adata, key)
    if pre_integrated is None:
        tmp = ad.AnnData(X=adata.X, obs=tmp.obs, obsm=dict(tmp.obsm), var=adata.var[[]])
    bm = benchmarker(
        tmp,
        batch_key=batch_key,
        label_key=label_key,
        embedding_obsm_keys=list(embeddings),
        bio_conservation_metrics=bio_cls(**{**_BIO_DEFAULTS, **(bio_conservation or {})}),
        batch_correction_metrics=batch_cls(**(batch_correction or {})),
        pre_integrated_embedding_obsm_key=pre_integrated,
        n_jobs=n_jobs,
        progress_bar=False,
    )
    bm.prepare(neighbor_computer=_exact_neighbors(n_jobs) if neighbors == "exact" else None)
    bm.benchmark()
    return bm.get_results(min_max_scale=False)
