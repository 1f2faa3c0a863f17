"""The saved form of a fitted corrector: a ``.pt`` file of tensors and a JSON sidecar.

:meth:`~scetm_mnn.pp.MNNCorrector.save` and :meth:`~scetm_mnn.pp.MNNCorrector.load` write
and read it through :func:`write_corrector` and :func:`read_corrector`. The ``.pt`` file
holds tensors only, so it is read with ``torch.load(..., weights_only=True)``; the sidecar
holds the parameters, the genes, the reference batches, the package version, the fit's
summary and an id that the ``.pt`` file repeats. ``FORMAT`` numbers the layout; files of
another layout are refused.

The pair is written atomically (:func:`scetm_mnn._atomic.atomic_files`): both files are
written to temporaries and fsynced, then the ``.pt`` file is renamed into place, then the
sidecar. A save killed between the two renames leaves the new ``.pt`` file beside the old
sidecar, and the new sidecar complete as its temporary: :func:`read_corrector` sees the ids
differ, finds the temporary whose id matches, and renames it into place (a roll-forward,
as SQLite replays its journal), so a reader always gets the old pair or the new one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from .._atomic import atomic_files, fsync_dir, pending
from .._disk import check_free_space
from .._distributed import is_global_zero
from ._distributed_fit import RUNTIME
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
    """Write a fitted corrector; returns the path of the ``.pt`` file.

    In a script that runs in several processes, only rank 0 writes (the others return the
    path and write nothing). The runtime arguments (``devices``, ...) are not kept: a
    loaded corrector has their defaults.
    """
    from .. import __version__

    state_path, meta_path = corrector_paths(path)
    if not is_global_zero():
        logger.info("Not saving the corrector on this rank; rank 0 saves it.")
        return state_path
    params = {k: v for k, v in params.items() if k not in RUNTIME}
    existing = [str(p) for p in (state_path, meta_path) if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"{', '.join(existing)} already exist; pass overwrite=True to replace them "
            "(they were left untouched)."
        )
    state = {
        "format": FORMAT,
        "fit_id": fit_id,
        "net": fitted.net.state_dict(),
        "space": fitted.space.state_dict(),
        "search": fitted.search.state_dict(),
        "reference_coords": torch.from_numpy(fitted.reference_coords),
        "reference_codes": torch.from_numpy(fitted.reference_codes),
    }
    if fitted.reference_shift is not None:
        state["reference_shift"] = torch.from_numpy(fitted.reference_shift)
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
    tensors = [t for part in state.values() if isinstance(part, dict) for t in part.values()]
    tensors += [v for v in state.values() if isinstance(v, torch.Tensor)]
    needed = sum(t.numel() * t.element_size() for t in tensors) + (1 << 20)
    check_free_space(state_path, needed, "the corrector")
    if overwrite and pending(meta_path) and state_path.is_file():
        # Complete a killed save first: the stale temporaries go when this one starts.
        with contextlib.suppress(ValueError):
            _rolled_forward(meta_path, _read_state(state_path)["fit_id"])
    with atomic_files([state_path, meta_path], overwrite=overwrite) as (state_tmp, meta_tmp):
        torch.save(state, state_tmp)
        meta_tmp.write_text(json.dumps(meta, indent=1))
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


def _read_meta(path: Path) -> dict[str, Any]:
    """A JSON sidecar, or one clear error naming it."""
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(
            f"{path} is not a corrector sidecar written by MNNCorrector.save (it is "
            f"truncated, or another kind of file): {error}"
        ) from error
    if not isinstance(meta, dict):
        raise ValueError(f"{path} is not a corrector sidecar written by MNNCorrector.save.")
    if meta.get("format") != FORMAT:
        newer = isinstance(meta.get("format"), int) and meta["format"] > FORMAT
        raise ValueError(
            f"{path} has layout {meta.get('format')!r}; this version of scetm-mnn reads "
            f"layout {FORMAT}. "
            + ("Upgrade scetm-mnn to load it." if newer else "Fit and save the corrector again.")
        )
    return meta


def _read_state(path: Path) -> dict[str, Any]:
    """The tensors' file, read with torch's restricted unpickler, or one clear error."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated, random bytes, pickled objects
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ValueError(
            f"{path} is not a corrector file written by MNNCorrector.save (it is truncated, "
            "another kind of file, or holds objects other than tensors); it cannot be read "
            f"safely with torch.load(weights_only=True). Reason: {reason}"
        ) from error
    needed = {"fit_id", "net", "space", "search", "reference_coords", "reference_codes"}
    if not isinstance(state, dict) or not needed <= state.keys():
        raise ValueError(f"{path} does not hold a corrector written by MNNCorrector.save.")
    return state


def _rolled_forward(meta_path: Path, fit_id: str) -> dict[str, Any] | None:
    """The sidecar that a save killed between its two renames left as a temporary.

    Only one whose id is ``fit_id`` (the ``.pt`` file's) counts; it is renamed into place
    (where the folder is writable) and returned.
    """
    for candidate in pending(meta_path):
        try:
            meta = _read_meta(candidate)
        except (OSError, ValueError):
            continue
        if meta.get("fit_id") == fit_id:
            try:
                os.replace(candidate, meta_path)
                fsync_dir(meta_path.parent)
                logger.warning("Completed the save of %s that was killed.", meta_path)
            except OSError:
                logger.warning("Read %s: the save of %s was killed.", candidate, meta_path)
            return meta
    return None


def read_corrector(path: str | Path) -> tuple[dict[str, Any], list[str], Fitted, str]:
    """Read what :func:`write_corrector` wrote: ``(params, genes, fitted, fit_id)``.

    Raises
    ------
    FileNotFoundError
        The ``.pt`` file or its sidecar is missing.
    ValueError
        Either file is truncated, of another kind or of another layout, or the two were not
        saved together; the message names the file and the reason.
    """
    state_path, meta_path = corrector_paths(path)
    if not state_path.is_file():
        raise FileNotFoundError(
            f"{state_path} does not exist; MNNCorrector.load needs both the .pt file and "
            "its .json sidecar that MNNCorrector.save wrote."
        )
    meta = _read_meta(meta_path) if meta_path.is_file() else None
    state = _read_state(state_path)
    if meta is None or state["fit_id"] != meta.get("fit_id"):
        meta = _rolled_forward(meta_path, state["fit_id"]) or meta
    if meta is None:
        raise FileNotFoundError(
            f"{meta_path} does not exist; MNNCorrector.load needs both the .pt file and its "
            ".json sidecar that MNNCorrector.save wrote."
        )
    if state["fit_id"] != meta.get("fit_id"):
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
        reference_shift=state["reference_shift"].numpy() if "reference_shift" in state else None,
    )
    return params, list(meta["genes"]), fitted, meta["fit_id"]
