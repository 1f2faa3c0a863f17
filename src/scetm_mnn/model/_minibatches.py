"""Minibatches of chosen cells for the model's outputs, and the batch codes they decode with.

The output methods (latent, normalized expression, ELBO, DE) read the cells they are asked
for through the model's own data path (``scetm_mnn.train.source_from_manager``). A pass
over a few cells densifies only their rows, so ``indices=[3]`` reads one row; a pass over
most cells preloads small data as training does. An AnnData registered like the training
data (held-out cells) works the same way.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from anndata import AnnData
from scvi import REGISTRY_KEYS

from ..train import source_from_manager

DEFAULT_BATCH_SIZE = 2000
"""Cells per forward pass of the output methods."""


def cell_indices(adata: AnnData, indices: Sequence[int] | np.ndarray | None) -> np.ndarray:
    """``indices`` as an integer array into ``adata`` (all cells when ``None``), checked."""
    if indices is None:
        return np.arange(adata.n_obs)
    out = np.asarray(indices)
    if out.dtype == bool:
        if out.shape != (adata.n_obs,):
            raise ValueError(
                f"A boolean mask of indices needs one entry per cell ({adata.n_obs}), "
                f"got shape {out.shape}."
            )
        return np.flatnonzero(out)
    out = out.reshape(-1)
    if out.size and not np.issubdtype(out.dtype, np.integer):
        raise TypeError(f"indices must be integers or a boolean mask, not {out.dtype}.")
    if out.size and (out.min() < -adata.n_obs or out.max() >= adata.n_obs):
        raise IndexError(f"indices out of range for {adata.n_obs} cells.")
    return out.astype(np.int64) % max(adata.n_obs, 1)


def minibatches(
    model,
    adata: AnnData | None,
    indices: Sequence[int] | np.ndarray | None,
    batch_size: int | None,
    encoder_only: bool = False,
) -> tuple[AnnData, np.ndarray, Iterator[dict[str, torch.Tensor]]]:
    """The validated AnnData, the cell indices and their minibatches, on the model's device.

    The module is put in eval mode (no dropout, BatchNorm running statistics). With
    ``encoder_only``, the minibatches hold only what the encoder reads (no counts when it
    reads a corrected input; ``source_from_manager(encoder_only=True)``).
    """
    model._check_if_trained(warn=False)
    adata = model._validate_anndata(adata)
    indices = cell_indices(adata, indices)
    # Small sparse data are densified once only for a pass over most cells; a few cells
    # densify only their own rows.
    preload = indices.size * 2 >= adata.n_obs
    manager = model.get_anndata_manager(adata, required=True)
    source = source_from_manager(manager, preload=preload, encoder_only=encoder_only)
    model.module.eval()
    device = model.device

    def batches() -> Iterator[dict[str, torch.Tensor]]:
        for tensors in source.iterate(indices, int(batch_size or DEFAULT_BATCH_SIZE)):
            yield {key: value.to(device) for key, value in tensors.items()}

    return adata, indices, batches()


def batch_codes(model, adata: AnnData, transform_batch) -> list[int | None]:
    """Codes of the batches named in ``transform_batch`` (``None``: each cell's own batch).

    ``transform_batch`` is ``None``, a batch category, its integer code, or a list of them,
    as in scvi-tools.
    """
    if transform_batch is None:
        return [None]
    values = (
        list(transform_batch)
        if isinstance(transform_batch, list | tuple | np.ndarray)
        else [transform_batch]
    )
    manager = model.get_anndata_manager(adata, required=True)
    mapping = list(manager.get_state_registry(REGISTRY_KEYS.BATCH_KEY).categorical_mapping)
    codes: list[int | None] = []
    for value in values:
        if value is None:
            codes.append(None)
        elif value in mapping:
            codes.append(mapping.index(value))
        elif isinstance(value, int | np.integer) and 0 <= value < len(mapping):
            codes.append(int(value))
        else:
            raise ValueError(
                f"transform_batch={value!r} is not a batch of the model; the batches are "
                f"{mapping}."
            )
    return codes


def with_batch(tensors: dict[str, torch.Tensor], code: int | None) -> dict[str, torch.Tensor]:
    """The minibatch with every cell's batch set to ``code`` (unchanged for ``None``)."""
    if code is None or REGISTRY_KEYS.BATCH_KEY not in tensors:
        return tensors
    batch = torch.full_like(tensors[REGISTRY_KEYS.BATCH_KEY], code)
    return {**tensors, REGISTRY_KEYS.BATCH_KEY: batch}


def posterior_draws(
    model,
    adata: AnnData | None,
    indices: Sequence[int] | np.ndarray | None,
    batch_size: int | None,
    n_samples: int,
    decode,
) -> tuple[AnnData, np.ndarray, np.ndarray]:
    """``decode(tensors, inference_outputs)`` for ``n_samples`` draws of ``δ`` per cell.

    Returns the validated AnnData, the indices, and the decoded draws stacked over the
    cells: ``(n_cells, D)`` for one draw, ``(n_samples, n_cells, D)`` for more.
    """
    if int(n_samples) < 1:
        raise ValueError(f"n_samples must be at least 1, got {n_samples}.")
    adata, indices, batches = minibatches(model, adata, indices, batch_size)
    module = model.module
    chunks = []
    for tensors in batches:
        inference_outputs = module.inference(
            **module._get_inference_input(tensors), n_samples=int(n_samples)
        )
        chunks.append(decode(tensors, inference_outputs).cpu().numpy())
    if not chunks:
        raise ValueError("No cells selected: indices is empty.")
    return adata, indices, np.concatenate(chunks, axis=1 if n_samples > 1 else 0)


def samples_per_cell(n_samples_overall: int, n_cells: int) -> int:
    """Draws per cell that give at least ``n_samples_overall`` draws in all (scvi-tools)."""
    return int(n_samples_overall) // max(n_cells, 1) + 1


def overall_draws(draws: np.ndarray, n_samples_overall: int) -> np.ndarray:
    """``n_samples_overall`` rows drawn with replacement from the pooled draws of all cells.

    The rows are chosen with torch's generator, so ``torch.manual_seed`` fixes them.
    """
    pooled = draws.reshape(-1, draws.shape[-1])
    rows = torch.randint(pooled.shape[0], (int(n_samples_overall),)).numpy()
    return pooled[rows]
