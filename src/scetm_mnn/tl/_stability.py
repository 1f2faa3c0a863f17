"""Topic stability: whether a model's topics come back when it is trained with another seed.

The runs' topics are matched to those of the first run (the reference) one to one, by
Hungarian matching (:func:`scipy.optimize.linear_sum_assignment`) on the cosine of their
gene distributions ``β = softmax(α · ρ)``, as cNMF matches its replicates' programmes for
its consensus. Each ``β`` row is centred on its mean first (the cosine is then Pearson's
correlation), so that two near-uniform topics, which share no gene programme, do not match
with a cosine near 1. A reference topic is present in a run when its match has a cosine of at
least ``min_cosine``; it is stable when it is present in at least ``min_presence`` of the
runs (the reference counts).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import anndata as ad
import numpy as np
import pandas as pd
import scvi
import torch
from scipy.optimize import linear_sum_assignment
from scipy.special import softmax

from ._topic_matrices import _as_topic_gene

#: ``adata.uns`` key of the stability record that the report reads.
TOPIC_STABILITY_KEY = "topic_stability"


@dataclass
class TopicStability:
    """What :func:`topic_stability` found, in five fields.

    ``table``
        One row per reference topic: ``reproducibility`` (mean matched cosine over the other
        runs, 0 where unmatched), ``min_matched_cosine``, ``present_fraction`` (of all runs,
        the reference included) and ``stable`` (``present_fraction >= min_presence``).
    ``cosine``
        Reference topics × runs: the matched topic's cosine (NaN where unmatched).
    ``matches``
        Reference topics × runs: the matched topic's name (empty where unmatched).
    ``consensus_beta``
        With ``consensus=True``: reference topics × genes, the mean ``β`` of the present
        matches (rows sum to 1); else ``None``.
    ``consensus_theta``
        With ``consensus=True`` and models: cells × reference topics, the mean ``θ`` of the
        present matches, rows renormalised; else ``None``.

    Examples
    --------
    >>> import numpy as np
    >>> import pandas as pd
    >>> import scetm_mnn as sm
    >>> beta = pd.DataFrame(np.eye(3, 8) * 5, index=["a", "b", "c"], columns=list("stuvwxyz"))
    >>> backwards = beta.iloc[::-1].set_axis(["x", "y", "z"])  # the same topics, renamed
    >>> result = sm.tl.topic_stability([beta, backwards])
    >>> result.matches["run_1"].tolist(), result.table["stable"].all()
    (['z', 'y', 'x'], np.True_)
    """

    table: pd.DataFrame
    cosine: pd.DataFrame
    matches: pd.DataFrame
    consensus_beta: pd.DataFrame | None = None
    consensus_theta: np.ndarray | None = None


@contextmanager
def _seeded(seed: int):
    """``scvi.settings.seed = seed`` inside; the random states and the seed restored after."""
    saved = scvi.settings.seed, random.getstate(), np.random.get_state()  # noqa: NPY002
    with torch.random.fork_rng(devices=[]):
        try:
            scvi.settings.seed = seed
            yield
        finally:
            scvi.settings.seed = saved[0]
            random.setstate(saved[1])
            np.random.set_state(saved[2])  # noqa: NPY002


def _trained(cls, adata: ad.AnnData, kwargs: Mapping, seed: int, train_kwargs: Mapping):
    with _seeded(seed):
        model = cls(adata, **kwargs)
        model.train(seed=seed, **{"enable_progress_bar": False, **train_kwargs})
    return model


def _init_kwargs(model) -> dict[str, object]:
    """The arguments ``model`` was built with (scvi-tools' ``init_params_``), flattened."""
    params = getattr(model, "init_params_", None) or {}
    kwargs = dict(params.get("non_kwargs", {}))
    for group in params.get("kwargs", {}).values():
        kwargs.update(group)
    return kwargs


def _runs(source, n_seeds, seeds, model_class, model_kwargs, train_kwargs) -> list:
    """The runs compared: the given ones, or models trained over the seeds."""
    train_kwargs = dict(train_kwargs or {})
    if isinstance(source, ad.AnnData):
        if model_class is None:
            raise ValueError(
                "Training on an AnnData needs model_class=, e.g. "
                "`model_class=sm.model.BatchCorrectedSCETM` (set up with its setup_anndata)."
            )
        seeds = list(range(n_seeds)) if seeds is None else list(seeds)
        kwargs = dict(model_kwargs or {})
        return [_trained(model_class, source, kwargs, s, train_kwargs) for s in seeds]
    if hasattr(source, "get_topic_gene_matrix"):
        seeds = list(range(1, n_seeds)) if seeds is None else list(seeds)
        kwargs = {**_init_kwargs(source), **(model_kwargs or {})}
        cls = type(source) if model_class is None else model_class
        return [source] + [_trained(cls, source.adata, kwargs, s, train_kwargs) for s in seeds]
    if isinstance(source, Sequence) and not isinstance(source, str):
        return list(source)
    raise TypeError(
        "topic_stability takes trained models (or topics × genes DataFrames), one model to "
        f"retrain, or an AnnData with model_class=, not {type(source).__name__}."
    )


def _check_same_guides(runs: list) -> None:
    """Models guided by other gene sets (``gene_sets=``) have other topics: refuse them."""
    guides = [_init_kwargs(run).get("gene_sets") for run in runs]
    for i, guide in enumerate(guides[1:], start=1):
        if (guide or None) != (guides[0] or None):
            raise ValueError(
                f"Run {i} is guided by other gene sets than run 0 ({sorted(guide or {})} vs "
                f"{sorted(guides[0] or {})}); compare models built with the same gene_sets."
            )


def _betas(runs: list) -> list[pd.DataFrame]:
    """Each run's ``β`` (rows sum to 1), the genes checked to be the reference's."""
    betas = []
    for i, run in enumerate(runs):
        logits = run.get_topic_gene_matrix() if hasattr(run, "get_topic_gene_matrix") else run
        logits = _as_topic_gene(logits)
        genes = logits.columns.astype(str)
        if i and (len(genes) != len(betas[0].columns) or set(genes) != set(betas[0].columns)):
            raise ValueError(
                f"Run {i} has other genes than run 0 ({len(genes)} vs {len(betas[0].columns)}; "
                "topics can only be matched over the same genes). Train every run on the "
                "same AnnData."
            )
        beta = pd.DataFrame(softmax(logits.to_numpy(np.float64), axis=1), logits.index, genes)
        betas.append(beta if not i else beta[betas[0].columns])
    return betas


def _centred(beta: np.ndarray) -> np.ndarray:
    """Rows minus their mean, unit length: their dot products are centred cosines."""
    centred = beta - beta.mean(axis=1, keepdims=True)
    return centred / np.linalg.norm(centred, axis=1, keepdims=True).clip(min=1e-300)


def _match(reference: np.ndarray, other: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each reference topic, its Hungarian match in ``other`` (-1: none) and the cosine."""
    a, b = _centred(reference), _centred(other)
    cosine = a @ b.T
    rows, cols = linear_sum_assignment(cosine, maximize=True)
    match = np.full(len(a), -1)
    match[rows] = cols
    matched = np.where(match >= 0, cosine[np.arange(len(a)), np.maximum(match, 0)], np.nan)
    return match, matched


def topic_stability(
    source,
    n_seeds: int = 5,
    *,
    seeds: Sequence[int] | None = None,
    model_class: type | None = None,
    model_kwargs: Mapping[str, object] | None = None,
    train_kwargs: Mapping[str, object] | None = None,
    min_cosine: float = 0.7,
    min_presence: float = 0.8,
    consensus: bool = False,
    key_added: str | None = None,
) -> TopicStability:
    """Match topics across runs trained with different seeds: which ones reproduce.

    Each run's topics are matched one to one with the reference's (the first run) by
    Hungarian matching on the cosine of their gene distributions ``β = softmax(α · ρ)``.
    A reference topic's reproducibility is its mean matched cosine over the other runs
    (1 when every run finds it again); it is present in a run when the match's cosine is at
    least ``min_cosine``, and stable when present in at least ``min_presence`` of the runs.

    Parameters
    ----------
    source
        Trained models (or topics × genes logit DataFrames, as ``get_topic_gene_matrix``
        returns) over the same genes, the first the reference; or one trained model, the
        reference, retrained as ``type(model)(model.adata, **its init arguments)`` with
        each of ``seeds`` (default 1, …, ``n_seeds - 1``); or an AnnData set up for
        ``model_class``, trained with each of ``seeds`` (default 0, …, ``n_seeds - 1``).
    n_seeds
        Runs in all when models are trained.
    seeds
        The seeds of the trained models (``scvi.settings.seed`` at construction and
        ``train(seed=)``; both are restored after).
    model_class
        The model trained on an AnnData (e.g. :class:`~scetm_mnn.model.BatchCorrectedSCETM`).
    model_kwargs
        Arguments of the trained models' constructor (with a model: over its own).
    train_kwargs
        Arguments of their ``train()``.
    min_cosine
        Smallest matched cosine of a topic present in a run.
    min_presence
        Smallest fraction of the runs a stable topic is present in.
    consensus
        Also return the consensus ``β`` and, with models, ``θ`` (means over the present
        matches).
    key_added
        Write ``{"reproducibility": {topic: ...}, "present_fraction": {...}, "stable":
        {...}, "n_runs": ..., "min_cosine": ..., "min_presence": ...}`` to
        ``uns[key_added]`` of the reference model's AnnData (or the given AnnData); the
        report reads ``uns["topic_stability"]``.

    Returns
    -------
    A :class:`TopicStability`.

    Raises
    ------
    ValueError
        When fewer than two runs are compared, or the runs have different genes or are
        guided by different gene sets.

    Examples
    --------
    Two identical runs reproduce every topic with cosine 1:

    >>> import scetm_mnn as sm
    >>> adata = sm.datasets.simulate(n_cells=200, n_genes=50, random_state=0)
    >>> sm.model.BatchCorrectedSCETM.setup_anndata(adata, batch_key="batch")
    >>> model = sm.model.BatchCorrectedSCETM(adata, n_topics=4, n_emb=8)
    >>> model.train(max_epochs=2, enable_progress_bar=False)
    >>> result = sm.tl.topic_stability([model, model])
    >>> result.table["reproducibility"].round(6).unique().tolist()
    [1.0]
    >>> retrained = sm.tl.topic_stability(model, n_seeds=2, train_kwargs={"max_epochs": 2})
    >>> list(retrained.cosine.columns)
    ['run_0', 'run_1']
    """
    if not 0.0 <= min_cosine <= 1.0 or not 0.0 < min_presence <= 1.0:
        raise ValueError(
            f"min_cosine must be in [0, 1] and min_presence in (0, 1], not {min_cosine} and "
            f"{min_presence}."
        )
    runs = _runs(source, n_seeds, seeds, model_class, model_kwargs, train_kwargs)
    if len(runs) < 2:
        raise ValueError(f"Topic stability compares at least two runs, not {len(runs)}.")
    _check_same_guides(runs)
    betas = _betas(runs)
    names = [f"run_{i}" for i in range(len(runs))]
    topics = pd.Index(betas[0].index.astype(str), name="topic")
    match = np.zeros((len(topics), len(runs)), dtype=np.int64)
    cosine = np.zeros((len(topics), len(runs)))
    match[:, 0], cosine[:, 0] = np.arange(len(topics)), 1.0
    for i, beta in enumerate(betas[1:], start=1):
        match[:, i], cosine[:, i] = _match(betas[0].to_numpy(), beta.to_numpy())
    present = np.nan_to_num(cosine) >= min_cosine
    present[:, 0] = True
    table = pd.DataFrame(
        {
            "reproducibility": np.nan_to_num(cosine[:, 1:]).mean(axis=1),
            "min_matched_cosine": np.nanmin(np.where(match[:, 1:] >= 0, cosine[:, 1:], 0.0), 1),
            "present_fraction": present.mean(axis=1),
        },
        index=topics,
    )
    table["stable"] = table["present_fraction"] >= min_presence - 1e-12
    matched = [
        [str(betas[i].index[m]) if m >= 0 else "" for i, m in enumerate(row)] for row in match
    ]
    result = TopicStability(
        table,
        pd.DataFrame(np.where(match >= 0, cosine, np.nan), index=topics, columns=names),
        pd.DataFrame(matched, index=topics, columns=names),
    )
    if consensus:
        result.consensus_beta, result.consensus_theta = _consensus(runs, betas, match, present)
    if key_added is not None:
        _write(runs[0], key_added, table, len(runs), (min_cosine, min_presence))
    return result


def _consensus(runs, betas, match, present) -> tuple[pd.DataFrame, np.ndarray | None]:
    """The mean ``β`` (and ``θ`` of models) over each reference topic's present matches."""
    weight = present.astype(np.float64)
    beta = np.zeros(betas[0].shape)
    for i, run_beta in enumerate(betas):
        values = run_beta.to_numpy()[np.maximum(match[:, i], 0)]
        beta += weight[:, i : i + 1] * values
    beta /= weight.sum(axis=1, keepdims=True)
    beta = pd.DataFrame(beta / beta.sum(axis=1, keepdims=True), betas[0].index, betas[0].columns)
    if not all(hasattr(run, "get_topic_proportions") for run in runs):
        return beta, None
    thetas = [np.asarray(run.get_topic_proportions(runs[0].adata)) for run in runs]
    theta = sum(w * t[:, np.maximum(m, 0)] for w, t, m in zip(weight.T, thetas, match.T))
    theta = theta / theta.sum(axis=1, keepdims=True).clip(min=np.finfo(float).tiny)
    return beta, theta


def _write(reference, key: str, table: pd.DataFrame, n_runs: int, limits) -> None:
    target = getattr(reference, "adata", None)
    if target is None:
        raise ValueError("key_added needs models (or an AnnData) to write to, not DataFrames.")
    target.uns[key] = {
        "reproducibility": {k: float(v) for k, v in table["reproducibility"].items()},
        "present_fraction": {k: float(v) for k, v in table["present_fraction"].items()},
        "stable": {k: bool(v) for k, v in table["stable"].items()},
        "n_runs": n_runs,
        "min_cosine": float(limits[0]),
        "min_presence": float(limits[1]),
    }
