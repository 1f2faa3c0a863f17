"""``mnn_correct``: the deepMNN corrector in one scanpy-style call.

It is ``MNNCorrector(batch_key, ...).fit_transform(adata)``: the corrector's parameters are
declared, with their defaults, by :class:`~scetm_mnn.pp.MNNCorrector` alone and passed
through; the signature that ``help``, IDEs' runtime introspection and the API reference
show (``mnn_correct.__signature__``) is built from the class's, and the docstring from the
same parameter table (``scetm_mnn.pp._corrector_doc``).
"""

from __future__ import annotations

import inspect
import typing
from pathlib import Path

from anndata import AnnData

from ._corrector import MNNCorrector
from ._corrector_doc import document


@document
def mnn_correct(
    adata: AnnData,
    batch_key: str,
    *,
    key_added: str = "mnn_corrected",
    dense_layer: bool | None = None,
    copy: bool = False,
    return_corrector: bool = False,
    ckpt_path: str | Path | None = None,
    resume: bool = False,
    **params,
) -> AnnData | MNNCorrector | tuple[AnnData, MNNCorrector] | None:
    """Remove batch effects with a residual network trained on MNN pairs (deepMNN).

    1. A frozen latent space is fitted on all cells: PCA (``z = (x − mean) @ W``) or the
       encoder of a small pretrained autoencoder.
    2. Mutual nearest neighbours between every pair of batches are found by Euclidean
       distance in the leading ``n_search_comps`` centred PCA scores of the log-expression
       (:func:`~scetm_mnn.pp.find_mnn_pairs`, at most ``search_rounds`` rounds: each
       round after the first searches with the batch offsets estimated from the previous
       round's pairs removed, so that pairs join the same states rather than the facing
       edges of shifted populations). Batches larger than ``max_search_cells`` are
       searched through a seeded sample of that many cells.
    3. A network is trained so that the two cells of each pair land close together in the
       latent space while the output stays close to the input::

           x̂ = x + C(x) Bᵀ
           loss = batch_weight · d(z(x̂_a), z(x̂_b)) + rec_weight · d(x̂, x)

       where ``d`` is the mean absolute (``"l1"``) or mean squared (``"l2"``) difference
       over the latent dimensions or genes, averaged over the minibatch, and ``B`` is an
       orthonormal basis of the gene-space directions the latent map sees (the PCA
       loadings, or the row space of the encoder's first layer). Outside them the loss is
       blind, and an unconstrained network adds batch-specific changes there that grow with
       the data (``benchmarks/results/corrector.md``); there the expression is kept as it
       was. The shift ``C`` (cells × ``n_comps``) comes from ``network``: ``"bottleneck"``
       reads all genes through ``n_hidden`` units and writes ``C`` directly;
       ``"residual"`` is deepMNN's residual network over the genes (``n_blocks`` blocks
       ``x + g(x)``), ``C = (f(x) − x) B``.
    4. The BatchNorm statistics are re-estimated for the final weights, and all cells are
       corrected with the network in eval mode, in chunks.

    This is ``MNNCorrector(batch_key, ...).fit_transform(adata)``
    (:class:`~scetm_mnn.pp.MNNCorrector`); pass ``return_corrector=True`` to keep the
    fitted corrector, e.g. to correct cells of new batches later or to save it.

    Training costs at most ``max_epochs × pairs_per_epoch`` pairs (10 240 by default)
    whatever the number of cells or pairs: the pairs of a larger data set are more samples
    of the same alignment problem, and the budget removes the same fraction of the batch
    gap at 10 000, 100 000 and 300 000 simulated cells (``benchmarks/results/corrector.md``).
    The same holds for the pair search, bounded by ``max_search_cells`` per batch; only
    the PCA and correcting every cell grow, linearly (``benchmarks/results/scale.md``).
    The bottleneck network has ``n_genes · n_hidden`` weights in its first layer, the
    residual network ``4 · n_blocks · n_genes²``, so select genes first (e.g. 2000 HVGs).

    Parameters
    ----------
    adata
        Log-normalized expression in ``X`` (or ``layers[layer]``) over the genes to correct,
        e.g. the output of :func:`~scetm_mnn.pp.preprocess`; dense or sparse, any float
        dtype. A view is made an actual AnnData when ``copy=False``.
    batch_key
        ``obs`` column with the batch of each cell.
    %(params)s
    key_added
        Prefix of the output keys.
    %(writing)s
    return_corrector
        Also return the fitted :class:`~scetm_mnn.pp.MNNCorrector`: alone, or as
        ``(adata, corrector)`` with ``copy=True``.
    %(checkpoint)s

    Returns
    -------
    %(outputs)s
    %(fit_outputs)s

    Raises
    ------
    KeyError
        ``batch_key`` is not an ``obs`` column, or ``layer`` is not a layer.
    ValueError
        Non-finite values; data that look like raw counts rather than log-scale (maximum
        above 50, or integer-valued with maximum above 10); invalid parameters; or no MNN
        pairs between any batches.

    Examples
    --------
    %(three_batches)s
    >>> sm.pp.mnn_correct(adata, "batch", max_epochs=2)
    >>> adata.layers["mnn_corrected"].shape, adata.obsm["X_mnn_corrected"].shape
    ((600, 100), (600, 50))
    >>> adata.uns["mnn_corrected"]["n_pairs"] > 0
    True
    """
    unknown = [name for name in params if name not in _FORWARDED]
    if unknown:
        raise TypeError(f"mnn_correct() got an unexpected keyword argument {unknown[0]!r}")
    corrector = MNNCorrector(batch_key, **params)
    out = corrector.fit_transform(
        adata,
        key_added=key_added,
        dense_layer=dense_layer,
        copy=copy,
        ckpt_path=ckpt_path,
        resume=resume,
    )
    if return_corrector:
        return (out, corrector) if copy else corrector
    return out


_FORWARDED = tuple(inspect.signature(MNNCorrector).parameters)[1:-2]
"""The corrector's parameters that mnn_correct passes on: all but ``batch_key`` (its own
argument) and ``adapter``, ``adapter_ridge`` (which only ``transform`` uses)."""
_PLACED_BEFORE = {"key_added": "random_state", "dense_layer": "chunk_size"}
"""Where mnn_correct's own keywords stand among the corrector's (as they always have)."""


def _full_signature() -> tuple[inspect.Signature, dict[str, typing.Any]]:
    """mnn_correct's signature and annotations: its own parameters and the corrector's."""
    own = inspect.signature(mnn_correct)
    corrector = inspect.signature(MNNCorrector).parameters
    forwarded = [corrector[name] for name in _FORWARDED]
    keywords = [p for p in own.parameters.values() if p.kind is p.KEYWORD_ONLY]
    ordered = []
    for parameter in forwarded:
        ordered += [p for p in keywords if _PLACED_BEFORE.get(p.name) == parameter.name]
        ordered.append(parameter)
    ordered += [p for p in keywords if p.name not in _PLACED_BEFORE]
    positional = [own.parameters["adata"], own.parameters["batch_key"]]
    hints = typing.get_type_hints(MNNCorrector.__init__)
    annotations = {**{name: hints[name] for name in _FORWARDED}, **mnn_correct.__annotations__}
    return own.replace(parameters=[*positional, *ordered]), annotations


mnn_correct.__signature__, mnn_correct.__annotations__ = _full_signature()
