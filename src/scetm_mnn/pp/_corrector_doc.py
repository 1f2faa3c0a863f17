"""The corrector's documentation, written once, and the checks of its parameters.

:class:`~scetm_mnn.pp.MNNCorrector` declares the parameters (its ``__init__`` holds the one
list of names, annotations and defaults) and :func:`~scetm_mnn.pp.mnn_correct` takes them
through. Their documentation (``PARAMS_DOC``) and that of the outputs are written here
once; ``document`` fills them into the docstrings of both and of the methods that
share them. The class's own docstring (``CORRECTOR_DOC``) is here too.
"""

from __future__ import annotations

from typing import Any

from .._docstrings import EXAMPLES, fill_docstring
from ._adapter import ADAPTERS
from ._distributed_fit import RUNTIME, check_runtime
from ._training import DISTANCES

KNOWN_BATCHES = ("reference", "query", "raise")
"""What ``MNNCorrector.transform`` may take a batch named like a reference batch for."""

PARAMS_DOC = """\
    layer
        Layer to correct instead of ``X`` (the same layer is read by ``transform``).
    n_neighbors
        Neighbours per cell in the MNN search (reduced, with a log message, for batches
        smaller than that). Against 20 (fastMNN's), 40 finds 2.3 times the pairs on the
        Baron pancreas and raises the mean ARI of the corrected latent over a Leiden sweep
        (0.913 → 0.915 human, 0.842 → 0.888 mouse, seeds 0–4), at a slightly lower batch
        entropy (``benchmarks/results/pairs.md``).
    n_search_comps
        Leading PCA components in which MNN pairs are searched (the loss space's own with
        ``latent="pca"`` and ``n_comps >= n_search_comps``, else a PCA fitted for the
        search). With a single round, 30 and 50 components pair different cell types
        about equally often on the Baron pancreas (10.1 % against 10.1 % human, 3.9 %
        against 4.0 % mouse), and 30 finds more pairs on mouse (6,474 against 5,801;
        ``benchmarks/results/pairs.md``).
    search_rounds
        Most rounds of the MNN search (``n_rounds`` of :func:`~scetm_mnn.pp.find_mnn_pairs`;
        the offset rounds stop early once the offsets have converged); 1 searches once,
        between the uncorrected batches.
    max_search_cells
        Most cells per batch searched for MNN pairs (``max_cells`` of
        :func:`~scetm_mnn.pp.find_mnn_pairs`: one seeded sample per batch; the pairs are
        the exact mutual nearest neighbours among the sampled cells). 10 000 cells per
        batch give far more pairs than training uses and bound the search's cost whatever
        the data's size; ``None`` searches every cell.
    n_comps
        Dimensions of the latent space.
    latent
        ``"pca"`` (PCA of all cells, loadings frozen) or ``"autoencoder"`` (an autoencoder
        pretrained on all cells, encoder frozen).
    network
        ``"residual"`` (deepMNN's residual network over the genes, ``n_blocks`` blocks),
        ``"bottleneck"`` (all genes → ``n_hidden`` → ``n_hidden`` → the shift ``C``; about a
        tenth of the arithmetic per cell at 2000 genes), or ``"auto"`` (the default): the
        residual network up to ``AUTO_RESIDUAL_MAX_CELLS`` (50 000) cells, the bottleneck
        above, where correcting every cell with the residual network would dominate the
        run. Both keep the change to the span of ``B``. On the Baron pancreas the
        residual network mixes the donors most and the bottleneck still more than Harmony
        (``benchmarks/results/corrector_network.md``). The choice is recorded in
        ``uns[key_added]["params"]["network"]``.
    n_hidden
        Hidden units of the bottleneck network.
    n_blocks
        Residual blocks of the residual network; each starts as the identity.
    batch_weight
        Weight of the pair term ``L_batch``.
    rec_weight
        Weight of the reconstruction term ``L_rec``; larger keeps the output closer to
        the input (less correction).
    distance
        ``"l1"`` (mean absolute difference, as deepMNN) or ``"l2"`` (mean squared
        difference).
    max_epochs
        Maximum number of epochs (0 leaves the network at its initialization, the
        identity).
    batch_size
        Pairs per minibatch (each minibatch holds twice as many cells).
    pairs_per_epoch
        Pairs drawn (without replacement) per epoch; all of them when there are fewer.
    lr
        Adam learning rate; 0.1 as in deepMNN (every linear layer is followed by
        BatchNorm, so its weights' scale does not matter), which corrects well within the
        short default budget.
    early_stopping_patience
        Stop when the epoch loss has not improved for this many epochs.
    random_state
        Seed of the latent space, the pair search, the initialization and the minibatches.
        The global torch RNG is left untouched; the same seed gives the same result on the
        same machine and thread count.
    chunk_size
        Cells densified at a time when passing over all cells (PCA, correcting every cell);
        2048 (``scetm_mnn._rows.CHUNK_SIZE``) by default. It bounds the memory, not the
        result: other chunk sizes give the same output up to float rounding.
    devices
        Processes per machine the fit runs in; at most the machine's CPU cores (or GPUs).
        Above 1, the fit runs data-parallel under Lightning Fabric, which starts the
        other processes by running your script again, so the call must be in a script,
        not a notebook. The pair search's batch pairs and each training minibatch are
        shared among the processes, BatchNorm normalises over all of them, and every
        process ends with the same corrector and writes the same outputs into its own
        ``adata``; files (:meth:`~scetm_mnn.pp.MNNCorrector.save`, the checkpoint) are
        written by rank 0 only. A topic model's ``train(devices=N, strategy="ddp")``
        later in the script runs in the same processes. The pairs are those of one
        process, and the training is its training up to float rounding (a minibatch
        that is not a multiple of the processes is padded with its first pairs). See
        the user guide, "Training on many machines". The four runtime arguments
        (``devices``, ``strategy``, ``accelerator``, ``num_nodes``) say where the fit
        runs, not what it fits: they are not recorded in ``uns[key_added]["params"]``,
        the saved corrector or the checkpoint's fingerprint (a fit checkpointed in some
        number of processes resumes in any other), and a loaded corrector has the
        defaults, with which the fit is that of one process, as before, bit for bit.
    strategy
        ``"auto"`` (one process, or ``"ddp"`` when ``devices`` or ``num_nodes`` is above
        1) or ``"ddp"`` (Lightning's DistributedDataParallel; gloo on the CPU).
    accelerator
        Where the network trains: ``"cpu"`` (the default), ``"gpu"`` (or ``"cuda"``), or
        ``"auto"`` (a GPU when torch sees one). The pair search and the correction of
        every cell run on the CPU.
    num_nodes
        Machines the fit runs on, with ``devices`` processes on each (as in Lightning)."""

OUTPUT_DOC = """\
    ``None``, or the new AnnData when ``copy=True``. ``X`` and existing keys are never
    modified; these keys are added:

    ``layers[key_added]``
        Corrected expression (dense float32, cells × genes), when ``dense_layer`` (by
        default for data up to 128 MiB dense).
    ``obsm[key_added + "_shift"]``, ``varm[key_added + "_basis"]``
        The same corrected expression, exactly, in low-rank form: ``x̂ = x + C Bᵀ``, with
        ``C`` (cells × d) and the orthonormal basis ``B`` (genes × d) of the gene-space
        directions the corrector changes (the PCA loadings). See
        :func:`~scetm_mnn.pp.corrected_expression`.
    ``obsm["X_" + key_added]``
        Latent of the corrected expression in the frozen space (cells × ``n_comps``)."""

WRITING_DOC = """\
    dense_layer
        Also write the corrected matrix densely to ``layers[key_added]``. ``None`` (the
        default) writes it when it takes at most
        ``DENSE_LAYER_MAX_BYTES`` (128 MiB, about 16 000 cells
        × 2000 genes). Either way the exact low-rank form is stored, which the model reads
        per minibatch and :func:`~scetm_mnn.pp.corrected_expression` exports in chunks.
    copy
        Return a new AnnData instead of writing into ``adata``."""
"""The arguments of how a correction is written (``mnn_correct``, ``fit_transform`` and
``transform``)."""

FIT_OUTPUT_DOC = """\
    ``obsp[key_added + "_pairs"]``
        Symmetric sparse MNN pair matrix (1 for each pair).
    ``uns[key_added]``
        ``params``; ``pair_counts`` (``"<batch_a>|<batch_b>"`` → MNN pairs used);
        ``n_pairs`` (their total); ``history`` (loss per epoch); ``timing`` (seconds
        spent on the ``latent``, ``pairs``, ``train`` and ``apply`` steps)."""
"""What fitting adds to ``OUTPUT_DOC`` (``mnn_correct`` and ``fit_transform``)."""

CORRECTOR_DOC = """\
The deepMNN corrector of :func:`~scetm_mnn.pp.mnn_correct`, kept to correct new cells.

:meth:`fit` trains the residual network on MNN pairs of a reference (the method of
:func:`~scetm_mnn.pp.mnn_correct`); :meth:`transform` corrects any cells over the same
genes with it, including cells of batches it has never seen; :meth:`save` and
:meth:`load` keep it on disk. It holds the genes, the parameters, the frozen latent
space, the network, the reference batches and, for the alignment of new batches, the
corrected reference cells' coordinates in the corrector's subspace (cells × ``d``
float32, ``d`` = ``n_comps`` with the PCA latent), not the reference expression.

**New batches.** The network removes the batch effects it learnt; a new batch brings
one it has not seen. :meth:`transform` maps the cells of a batch that is not a
reference batch with the reference frozen. ``adapter="mixture"`` (the default) aligns
the batch with the *uncorrected* reference as Symphony maps a query (soft clusters of
the reference, and per cluster the ridge-shrunk difference of the query's and the
reference's means), then gives each aligned cell the correction the network gave the
reference cells around it (the Gaussian-weighted mean of their shifts, as fastMNN
smooths correction vectors); it needs no pair search. The other adapters pass the batch
through the frozen network, find MNN pairs between it and the corrected reference
(pooled, in a PCA of the reference's coordinates, with the offset rounds of
:func:`~scetm_mnn.pp.find_mnn_pairs`), and fit a small map on those pairs:
``"affine"`` maps each cell's coordinates ``u`` to a change ``b + (u − ū) A`` in the
corrector's subspace, fitted by ridge least squares so that paired query cells land
on their reference partners; ``"local"`` adds to it what is left of the pairs'
changes, smoothed over each cell's ``n_neighbors`` nearest paired query cells;
``"shift"`` fits the translation ``b`` alone; ``"none"`` applies the network only. See
the user guide's section "Correcting new cells".

**Batch names.** Cells whose batch name is one of the reference batches are, by
default (``known_batches="reference"`` of :meth:`transform`), corrected as that batch:
by the frozen network alone, so the reference cells get exactly the output
:meth:`fit_transform` gave them. Pass ``known_batches="query"`` to align such a batch
as a new one anyway (e.g. another study's ``"donor1"``), or ``"raise"`` to refuse
names that clash.

**Many processes.** With ``devices=N, strategy="ddp"`` (from a script), :meth:`fit`
runs data-parallel under Lightning Fabric: the pair search and the training minibatches
are shared among the processes, every process ends with the same corrector, and only
rank 0 writes files (see ``devices`` below and the user guide, "Training on many
machines"). :meth:`transform` runs in the calling process.

Parameters
----------
batch_key
    ``obs`` column with the batch of each cell (in the reference and in queries).
%(params)s
adapter
    How :meth:`transform` aligns a batch the corrector was not fitted on:
    ``"mixture"``, ``"local"``, ``"affine"``, ``"shift"`` or ``"none"`` (see above).
adapter_ridge
    Ridge penalty of the affine adapter, relative to the spread of the paired query
    cells; larger stays closer to a translation.

Attributes
----------
genes_
    The genes it was fitted on (``var_names``, in order).
reference_batches_
    The reference batch names.
net_
    The network (:class:`torch.nn.Module`), eval mode.
network_
    Its kind, ``"residual"`` or ``"bottleneck"`` (``network="auto"`` resolved).
space_
    The frozen latent space (:class:`torch.nn.Module`).
history_
    Loss per training epoch.

Examples
--------
%(three_batches)s
>>> reference = adata[adata.obs["batch"] != "batch_2"].copy()
>>> query = adata[adata.obs["batch"] == "batch_2"].copy()
>>> corrector = sm.pp.MNNCorrector("batch", max_epochs=2).fit(reference)
>>> corrector.reference_batches_
['batch_0', 'batch_1']
>>> corrector.transform(query)
>>> query.obsm["X_mnn_corrected"].shape == (query.n_obs, 50)
True
>>> info = query.uns["mnn_corrected"]
>>> info["adapter"], info["adapters"]["batch_2"]["n_clusters"] >= 10
('mixture', True)
"""
"""The docstring of :class:`~scetm_mnn.pp.MNNCorrector`."""

CHECKPOINT_DOC = """\
    ckpt_path
        Where the fit keeps its checkpoint (a file, or a directory that holds
        ``corrector_fit.ckpt``): the MNN pairs once found, then the training state (the
        network, Adam, the epoch, the minibatch generator), after the last epoch and at
        most every 30 s before it (``$SCETM_MNN_CHECKPOINT_INTERVAL`` seconds; 0 after
        every epoch). Each write replaces the file atomically. ``None`` (the default)
        keeps none.
    resume
        Continue from the checkpoint at ``ckpt_path`` when there is one: the pairs are not
        searched again and training goes on from the saved epoch, giving the corrector the
        uninterrupted fit gives (same data, parameters and thread count). A checkpoint of
        other data or parameters is refused (``ValueError``). ``False`` starts afresh."""
"""The checkpoint arguments of a fit (``fit``, ``fit_transform`` and ``mnn_correct``)."""

_PARTS = {
    **EXAMPLES,
    "params": PARAMS_DOC,
    "checkpoint": CHECKPOINT_DOC,
    "outputs": OUTPUT_DOC,
    "writing": WRITING_DOC,
    "fit_outputs": FIT_OUTPUT_DOC,
}


document = fill_docstring(_PARTS)
"""Fill the ``%(name)s`` lines of a docstring with the shared parts, re-indented.

``%(params)s`` is the corrector's parameters, ``%(outputs)s`` the keys every correction
writes, ``%(fit_outputs)s`` those a fit adds, ``%(writing)s`` the ``dense_layer`` and
``copy`` arguments; the package's shared examples (``%(three_batches)s``, ...) too.
"""


_MINIMA = {
    "n_neighbors": 1,
    "n_search_comps": 1,
    "search_rounds": 1,
    "n_comps": 1,
    "n_hidden": 1,
    "n_blocks": 1,
    "max_epochs": 0,
    "batch_size": 1,
    "pairs_per_epoch": 1,
    "early_stopping_patience": 1,
    "chunk_size": 1,
    "max_search_cells": 1,
}
"""Smallest value of each integer parameter (``chunk_size`` and ``max_search_cells`` may
also be ``None``), in the order they are checked."""


def check_parameters(params: dict[str, Any]) -> None:
    """Raise a ``ValueError`` naming the first invalid parameter of ``MNNCorrector``."""
    distance, network, latent = params["distance"], params["network"], params["latent"]
    if distance not in DISTANCES:
        raise ValueError(f"distance must be 'l1' or 'l2', not {distance!r}.")
    if network not in ("auto", "bottleneck", "residual"):
        raise ValueError(f"network must be 'auto', 'bottleneck' or 'residual', not {network!r}.")
    if latent not in ("pca", "autoencoder"):
        raise ValueError(f"latent must be 'pca' or 'autoencoder', not {latent!r}.")
    if params["adapter"] not in ADAPTERS:
        raise ValueError(f"adapter must be one of {ADAPTERS}, not {params['adapter']!r}.")
    if not params["adapter_ridge"] >= 0:
        raise ValueError(f"adapter_ridge must be at least 0, not {params['adapter_ridge']}.")
    for name, minimum in _MINIMA.items():
        value = params[name]
        if value is None and name in ("chunk_size", "max_search_cells"):
            continue
        if value < minimum:
            raise ValueError(f"{name} must be at least {minimum}, not {value}.")
    check_runtime(params)


def recorded(params: dict[str, Any]) -> dict[str, Any]:
    """The parameters a fit records in ``uns``: all but ``chunk_size`` and ``RUNTIME``.

    Neither says what is fitted: ``chunk_size`` bounds the memory, and the runtime
    arguments (``devices``, ``strategy``, ``accelerator``, ``num_nodes``) say where the
    fit runs.
    """
    return {k: v for k, v in params.items() if k not in ("chunk_size", *RUNTIME)}


def check_transform(known_batches: str, max_missing_genes: float, adapter: str | None) -> None:
    """Raise a ``ValueError`` naming the first invalid argument of ``transform``."""
    if known_batches not in KNOWN_BATCHES:
        raise ValueError(f"known_batches must be one of {KNOWN_BATCHES}, not {known_batches!r}.")
    if not 0 <= max_missing_genes < 1:
        raise ValueError(
            f"max_missing_genes must be a fraction in [0, 1), not {max_missing_genes}."
        )
    if adapter is not None and adapter not in ADAPTERS:
        raise ValueError(f"adapter must be one of {ADAPTERS}, not {adapter!r}.")
