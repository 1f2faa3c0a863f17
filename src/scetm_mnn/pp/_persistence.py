"""The saved form of a fitted corrector: a ``.pt`` file of tensors and a JSON sidecar.

:meth:`~scetm_mnn.pp.MNNCorrector.save` and :meth:`~scetm_mnn.pp.MNNCorrector.load` write
and read it through :func:`write_corrector` and :func:`read_corrector`. The ``.pt`` file
holds tensors only, so it is read with ``torch.load(..., weights_only=True)``; the sidecar
holds the parameters, the genes, the reference batches, the package version, the fit's
summary and an id that the ``.pt`` file repeats. ``FORMAT`` numbers the layout; files of
another layout are refused.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from ._fitting import Fitted
from ._latent import FrozenPCA, build_encoder, freeze
from ._network import build_network

logger = logging.getLogger(__name__)

STATE_FILE = "corrector.pt"
"""Name of the tensors' file when :meth:`MNNCorrector.save` is given a directory."""
META_FILE = "corrector.json"
"""Name of the JSON sidecar when :meth:`MNNCorrector.save` is given a directory."""
FORMAT = 1
"""Version of the saved layout; :meth:`MNNCorrector.load` refuses others."""
_INFO = ("pair_counts", "n_pairs", "timing")
"""The fit's summary (``Fitted.info``), kept in the sidecar."""


def corrector_paths(path: str | Path) -> tuple[Path, Path]:
    """The ``.pt`` file and the JSON sidecar of ``path`` (a directory or either file)."""
    path = Path(path)
    if path.suffix in (".pt", ".json"):
        return path.with_suffix(".pt"), path.with_suffix(".json")
    return path / STATE_FILE, path / META_FILE


def write_corrector(
    path: str | Path,
    overwrite: bool,
    params: dict[str, Any],
    genes: list[str],
    fitted: Fitted,
    fit_id: str,
) -> Path:
    """Write a fitted corrector; returns the path of the ``.pt`` file."""
    from .. import __version__

    state_path, meta_path = corrector_paths(path)
    existing = [str(p) for p in (state_path, meta_path) if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"{', '.join(existing)} already exist; pass overwrite=True to replace them."
        )
    state_path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "format": FORMAT,
        "fit_id": fit_id,
        "net": fitted.net.state_dict(),
        "space": fitted.space.state_dict(),
        "search": fitted.search.state_dict(),
        "reference_coords": torch.from_numpy(fitted.reference_coords),
        "reference_codes": torch.from_numpy(fitted.reference_codes),
    }
    meta = {
        "format": FORMAT,
        "fit_id": fit_id,
        "scetm_mnn_version": __version__,
        "params": params,
        "network": fitted.network,
        "genes": genes,
        "reference_batches": fitted.reference_batches,
        "n_reference_cells": int(fitted.reference_coords.shape[0]),
        "history": fitted.history,
        **fitted.info,
    }
    torch.save(state, state_path)
    meta_path.write_text(json.dumps(meta, indent=1))
    logger.info("Saved the corrector to %s and %s.", state_path, meta_path)
    return state_path


def _space(latent: str, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """The frozen latent space of kind ``latent`` that ``state`` describes."""
    if latent == "pca":
        space = FrozenPCA(state["center.mean"].numpy(), state["loadings"].numpy())
    else:
        space = build_encoder(
            state["0.mean"].numpy(), state["1.weight"].shape[0], state["3.weight"].shape[0]
        )
    space.load_state_dict(state)
    return freeze(space)


def read_corrector(path: str | Path) -> tuple[dict[str, Any], list[str], Fitted, str]:
    """Read what :func:`write_corrector` wrote: ``(params, genes, fitted, fit_id)``."""
    state_path, meta_path = corrector_paths(path)
    for p in (state_path, meta_path):
        if not p.is_file():
            raise FileNotFoundError(
                f"{p} does not exist; MNNCorrector.load needs both the .pt file and its "
                ".json sidecar that MNNCorrector.save wrote."
            )
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(
            f"{meta_path} has layout {meta.get('format')!r}; this version of scetm-mnn "
            f"reads layout {FORMAT}. Fit and save the corrector again."
        )
    state = torch.load(state_path, map_location="cpu", weights_only=True)
    if state.get("fit_id") != meta["fit_id"]:
        raise ValueError(
            f"{state_path} and {meta_path} were not saved together (their fit ids "
            "differ); keep the pair that MNNCorrector.save wrote."
        )
    params = meta["params"]
    net = build_network(
        meta["network"],
        len(meta["genes"]),
        params["n_blocks"],
        params["n_hidden"],
        state["net"]["basis"],
    )
    # Correctors saved before the spread was restored have no spread: 1 and 0 (none).
    net.load_state_dict({**net.state_dict(), **state["net"]})
    search = FrozenPCA(state["search"]["center.mean"].numpy(), state["search"]["loadings"].numpy())
    coords = state["reference_coords"].numpy()
    if coords.shape[0] != meta["n_reference_cells"]:
        raise ValueError(f"{state_path} does not hold the reference {meta_path} describes.")
    fitted = Fitted(
        net=net.eval(),
        space=_space(params["latent"], state["space"]),
        network=meta["network"],
        history=list(meta["history"]),
        search=freeze(search),
        reference_coords=coords,
        reference_codes=state["reference_codes"].numpy(),
        reference_batches=list(meta["reference_batches"]),
        info={k: meta[k] for k in _INFO},
    )
    return params, list(meta["genes"]), fitted, meta["fit_id"]
