"""The end-to-end pipeline behind the CLI: preprocess → correct → topic model → evaluate."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path

import anndata as ad
import numpy as np
import scvi

from . import _memory, pp, tl
from ._costs import PhaseCosts
from ._distributed import is_global_zero, started_as_global_zero
from ._gene_sets import as_gene_sets
from ._h5ad import close_backed
from ._outputs import write_outputs
from ._result import CORRECTED_KEY, DATA_FILE, LATENT_KEY, TOPICS_KEY, PipelineResult
from ._resume import RunState, input_fingerprint
from ._rows import is_on_disk
from ._runtime import stage_arguments
from ._validation import get_matrix, obs_keys_checked
from .model import BatchCorrectedSCETM
from .pl import FIGURE_MAX_CELLS
from .tl._subsample import check_max_cells

logger = logging.getLogger(__name__)

__all__ = [
    "CORRECTED_KEY",
    "DATA_FILE",
    "LATENT_KEY",
    "TOPICS_KEY",
    "PipelineResult",
    "run_pipeline",
]


def run_pipeline(
    adata: ad.AnnData,
    batch_key: str,
    label_key: str | None = None,
    counts_layer: str | None = None,
    out: str | Path | None = None,
    n_top_genes: int = 2000,
    max_epochs: int | None = None,
    mnn_weight: float | None = None,
    random_state: int = 0,
    report: bool = True,
    source_name: str | None = None,
    correct_kwargs: Mapping[str, object] | None = None,
    max_cells: int | None = FIGURE_MAX_CELLS,
    resume: bool = False,
    check_memory: bool = True,
    gene_sets: str | Path | Mapping[str, list[str]] | None = None,
    devices: int = 1,
    strategy: str = "auto",
    accelerator: str | None = None,
    num_nodes: int = 1,
    compression: str | None = None,
) -> PipelineResult:
    """Preprocess, correct with MNN, train the topic model, and evaluate.

    Every phase logs (INFO) a line when it starts and one with its seconds and peak
    memory when it ends.

    Parameters
    ----------
    adata
        Raw counts in ``X`` or ``layers[counts_layer]``; not modified. It may be opened
        with ``backed="r"``: with ``out``, the counts in ``X`` are then never loaded; the
        preprocessing streams them, a chunk of cells at a time, into ``out/scetm_mnn.h5ad``
        (:func:`scetm_mnn.pp.preprocess` with ``filename``), which the run reads from disk
        and which holds its results in the end (the latent, θ, the corrector's low-rank
        form and pairs, beside the log-expression and the counts). Without ``out``, the
        counts are read into memory once, for the preprocessing.
    batch_key
        ``obs`` column with batches.
    label_key
        Optional ``obs`` column with cell types, for the Leiden sweep.
    counts_layer
        Layer with raw counts (``None``: ``X``).
    out
        Folder for the metrics, figures and saved model (nothing is written when ``None``).
        With it, the returned AnnData also keeps the UMAP of ``umap.png`` in
        ``obsm["X_scetm_mnn_umap"]`` (``NaN`` for cells a subsample leaves out), which the
        report reuses.
    n_top_genes
        Highly variable genes to keep.
    max_epochs
        Training epochs (``None``: the model's default).
    mnn_weight
        Weight of the MNN term in the topic model (``None``: the model's default).
    random_state
        Seed for every step.
    report
        Also write ``report.html`` into ``out`` (:func:`scetm_mnn.pl.report`). A failure
        inside the report is logged as a warning; the other outputs are written anyway.
    source_name
        What ``adata`` was read from (a file, a data set), named in the report.
    correct_kwargs
        Further arguments of :func:`scetm_mnn.pp.mnn_correct` (e.g. ``max_epochs`` for a
        quick look); the CLI passes none.
    max_cells
        Above this many cells, the Leiden sweep and ``umap.png`` use a stratified subsample
        of this many (by batch × cell type; :func:`scetm_mnn.tl.leiden_sweep`'s
        ``subsample``, :func:`scetm_mnn.pl.integration_umap`'s ``max_cells``), and the
        report at most this many (its own cap is 50,000). ``None``: every cell.
    resume
        Continue the run whose state is in ``out/checkpoints/`` (a run killed before it
        finished) from its last finished phase: preprocess, correct (the corrector's
        pairs and epochs checkpointed), train (the topic model's epochs checkpointed),
        latent; the evaluation and the outputs are then made again. The result is the
        uninterrupted run's (same arguments, input and thread count). Every run with
        ``out`` keeps that state; without a state, the run starts from the beginning.
    check_memory
        Before the preprocessing, estimate the run's peak memory from the input's shape
        and nnz (``scetm_mnn._memory.estimate_run``) and refuse, with an
        ``InsufficientMemoryError`` (a ``MemoryError`` and a ``ValueError``), a run that
        would not fit in the memory available. ``$SCETM_MNN_CHECK_MEMORY=0`` turns it off
        too.
    gene_sets
        Gene sets (a GMT file's path or a mapping of set name → genes) that guide the first
        topics, one per set, each named after its set (``BatchCorrectedSCETM``'s
        ``gene_sets``), and that name the other topics too: the topics are annotated
        against them (:func:`scetm_mnn.tl.annotate_topics`), so the report shows the
        labels. Read before any work, so a bad file fails at once.
    devices, strategy, accelerator, num_nodes
        Where the corrector's fit and the topic model's training run (both in the same
        processes): ``devices`` processes per machine (``strategy="ddp"``, on ``num_nodes``
        machines) start with the correction, by running the calling script again, and
        every process runs the run up to the latent; rank 0 alone evaluates and writes
        the state, the outputs and the report (the other processes return a result
        without ``sweep``). ``accelerator``: both stages' (``None``: the corrector on the
        CPU, the topic model on Lightning's ``"auto"``; with several processes, both on
        ``"auto"``). The defaults, one process, are the run of earlier versions.
    compression
        For counts streamed from a backed ``X`` into ``out/scetm_mnn.h5ad``: ``"lzf"`` or
        ``"gzip"`` compresses its matrices (:func:`scetm_mnn.pp.preprocess`'s
        ``compression``; lzf takes about a third of the disk), ``None`` (the default)
        writes them uncompressed. The results are the same either way.
    """
    keys = {batch_key: "batch_key"}
    if label_key is not None:
        keys[label_key] = "label_key"
    # Checked once here: the functions the run calls take these columns as checked.
    with obs_keys_checked(adata, keys), _ClosedOnError() as opened:
        check_max_cells(max_cells, "max_cells")  # before the hours of training, not after
        scvi.settings.seed = random_state
        sets = None if gene_sets is None else as_gene_sets(gene_sets)
        params = {
            "batch_key": batch_key,
            "label_key": label_key,
            "counts_layer": counts_layer,
            "n_top_genes": n_top_genes,
            "max_epochs": max_epochs,
            "mnn_weight": mnn_weight,
            "random_state": random_state,
            "max_cells": max_cells,
            "gene_sets": None if sets is None else f"{len(sets)} sets ({_digest(sets)})",
            **{f"correct.{k}": v for k, v in (correct_kwargs or {}).items()},
        }
        correct_runtime, train_runtime = stage_arguments(devices, strategy, accelerator, num_nodes)
        params.update(train_runtime)  # none for one process: the fingerprint of before
        costs = PhaseCosts()
        fingerprint = {**params, "input": input_fingerprint(adata, batch_key)}
        several = devices * num_nodes > 1  # rank 0 writes for all (and they start later)
        writes = started_as_global_zero() if several else is_global_zero()
        state = RunState(out, fingerprint, resume, write=writes)
        costs.rows = list(state.costs)
        # Counts on disk are streamed into the run's data file, which the run then reads.
        streamed = writes and out is not None and _on_disk(adata, counts_layer)
        data_file = Path(out) / DATA_FILE if streamed else None
        if not state.finished("preprocess") and check_memory:
            _check_memory(adata, counts_layer, n_top_genes, correct_kwargs, streamed)
        if state.finished("correct"):
            data = opened(state.read_data("corrected.h5ad", data_file))
        else:
            if state.finished("preprocess"):
                data = opened(state.read_data("preprocessed.h5ad", data_file))
            else:
                with costs.phase("preprocess"):
                    data = _preprocess(
                        adata, counts_layer, n_top_genes, batch_key, data_file, compression
                    )
                    opened(data)
                state.write_data("preprocessed.h5ad", data)
                state.finish("preprocess", costs.rows)
            with costs.phase("correct"):
                pp.mnn_correct(
                    data,
                    batch_key,
                    key_added=CORRECTED_KEY,
                    random_state=random_state,
                    ckpt_path=state.path("corrector_fit.ckpt"),
                    resume=state.resume,
                    **correct_runtime,
                    **dict(correct_kwargs or {}),
                )
            state.write_data("corrected.h5ad", data)
            state.finish("correct", costs.rows, ("preprocessed.h5ad", "corrector_fit.ckpt"))
        if state.finished("train"):
            model = state.read_model(BatchCorrectedSCETM, data)
        else:
            with costs.phase("train"):
                BatchCorrectedSCETM.setup_anndata(
                    data,
                    layer="counts",
                    batch_key=batch_key,
                    corrected_layer=CORRECTED_KEY,
                    mnn_pairs_key=f"{CORRECTED_KEY}_pairs",
                )
                model = BatchCorrectedSCETM(data, gene_sets=sets)
                train_kwargs = {} if mnn_weight is None else {"mnn_weight": mnn_weight}
                train_kwargs.update(state.topic_model_arguments(), **train_runtime)
                model.train(max_epochs=max_epochs, seed=random_state, **train_kwargs)
            state.write_model(model)
            state.finish("train", costs.rows, ("topic_model.ckpt",))
        if state.finished("latent"):
            data.obsm.update(state.read_arrays("latent.npz"))
        else:
            with costs.phase("latent"):
                data.obsm[LATENT_KEY] = model.get_latent_representation()
                data.obsm[TOPICS_KEY] = model.get_topic_proportions()
            latents = {key: data.obsm[key] for key in (LATENT_KEY, TOPICS_KEY)}
            state.write_arrays("latent.npz", latents)
            state.finish("latent", costs.rows)
        if not writes:  # every process has the embeddings; rank 0 evaluates and writes
            return PipelineResult(adata=data, model=model, params=params)
        if sets is not None:  # labels for the report's topic table and heatmap
            tl.annotate_topics(model, sets, key_added="topic_annotation")
        result = PipelineResult(adata=data, model=model, params=params)

        with costs.phase("evaluate"):
            if label_key is not None:
                result.sweep = tl.leiden_sweep(
                    data,
                    LATENT_KEY,
                    label_key,
                    batch_key,
                    random_state=random_state,
                    subsample=max_cells,
                )
                result.summary = tl.sweep_summary(result.sweep)
        result.costs = costs.frame()
        if out is not None:
            result.files = write_outputs(
                result,
                Path(out),
                batch_key,
                label_key,
                costs,
                report=report,
                source=source_name,
                max_cells=max_cells,
            )
        state.clear()
        return result


class _ClosedOnError:
    """The backed AnnDatas a run opens, closed if the run fails (a rerun may then write them).

    Called on an AnnData, it registers it when backed and returns it.
    """

    def __init__(self):
        self.backed: list[ad.AnnData] = []

    def __call__(self, adata: ad.AnnData) -> ad.AnnData:
        if adata.isbacked:
            self.backed.append(adata)
        return adata

    def __enter__(self) -> _ClosedOnError:
        return self

    def __exit__(self, kind, error, traceback) -> bool:
        if kind is not None:
            for adata in self.backed:
                close_backed(adata)
        return False


def _on_disk(adata: ad.AnnData, counts_layer: str | None) -> bool:
    """Whether the counts are on disk (the ``X`` of a backed AnnData)."""
    return is_on_disk(get_matrix(adata, counts_layer, argument="counts_layer"))


def _preprocess(
    adata,
    counts_layer,
    n_top_genes: int,
    batch_key: str,
    filename: Path | None = None,
    compression: str | None = None,
) -> ad.AnnData:
    """The preprocessed copy of ``adata``'s counts (``pp.preprocess``).

    With ``filename`` (given for counts in a backed ``X``, see :func:`_on_disk`) they are
    streamed into that file (its matrices written with ``compression``) and the result is
    the file, opened backed; counts on disk without it are read into memory once.
    """
    if filename is not None:
        return pp.preprocess(
            adata,
            n_top_genes=n_top_genes,
            batch_key=batch_key,
            filename=filename,
            compression=compression,
        )
    # The counts and annotations by reference: preprocess(copy=True) makes the one copy.
    counts = get_matrix(adata, counts_layer, argument="counts_layer")
    on_disk = is_on_disk(counts)
    if on_disk:  # the X of a backed AnnData: read once, preprocess needs it
        counts = counts.to_memory() if hasattr(counts, "to_memory") else counts[...]
    source = ad.AnnData(X=counts, obs=adata.obs.copy(), var=adata.var.copy())
    # Counts read from disk are the run's own: preprocessed in place, not copied again.
    data = pp.preprocess(source, n_top_genes=n_top_genes, batch_key=batch_key, copy=not on_disk)
    return source if on_disk else data


def _digest(sets: Mapping[str, list[str]]) -> str:
    """A short fingerprint of gene sets, so a resumed run checks they are the same."""
    text = json.dumps(sorted((name, sorted(genes)) for name, genes in sets.items()))
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def _check_memory(
    adata, counts_layer, n_top_genes: int, correct_kwargs, streamed: bool = False
) -> None:
    """Refuse a run whose estimated peak memory exceeds what is available."""
    counts = get_matrix(adata, counts_layer, argument="counts_layer")
    on_disk = is_on_disk(counts)
    nnz = getattr(counts, "nnz", None)
    if nnz is None and hasattr(counts, "group"):  # a backed sparse matrix
        nnz = int(counts.group["data"].shape[0])
    dtype = getattr(counts, "dtype", np.dtype("float32"))
    kwargs = {k: v for k, v in (correct_kwargs or {}).items() if k in _MEMORY_PARAMETERS}
    estimate = _memory.estimate_run(
        adata.n_obs,
        adata.n_vars,
        nnz,
        n_top_genes=n_top_genes,
        dtype_bytes=np.dtype(dtype).itemsize,
        input_in_memory=not on_disk,
        streamed=streamed,
        **kwargs,
    )
    _memory.check_memory(estimate, "This run")


_MEMORY_PARAMETERS = ("n_comps", "network", "n_hidden", "n_blocks")
"""The corrector's parameters that :func:`estimate_run` reads."""
