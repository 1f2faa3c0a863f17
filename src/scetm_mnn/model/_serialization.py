"""Model files that load with ``torch.load(..., weights_only=True)``.

scvi-tools writes ``model.pt`` with pandas DataFrames inside (the training history) and
reads it back with ``weights_only=False``, which runs arbitrary code from a tampered file.
The model hands scvi-tools its saved attributes already encoded
(:func:`encode_attributes`), so the file it writes holds plain data only.
Here DataFrames are stored as plain arrays and lists, and the file is read with torch's
restricted unpickler: tensors, numbers, strings, containers and numpy arrays only.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

MODEL_FILE = "model.pt"
"""The model file's name (after the prefix), as scvi-tools names it."""


def safe_globals() -> list:
    """What a model file may name beyond torch's defaults: the pieces of numpy arrays, bytes.

    These rebuild data and run no code of the file's choosing (numpy's private
    ``_reconstruct`` is how an ndarray pickles itself).
    """
    from numpy import dtypes

    reconstruct = np._core.multiarray._reconstruct
    kinds = [getattr(dtypes, name) for name in dir(dtypes) if name.endswith("DType")]
    return [reconstruct, np.ndarray, np.dtype, *kinds, bytes]


def model_path(dir_path: str | os.PathLike, prefix: str | None = None) -> Path:
    """Path of the model file in ``dir_path``."""
    return Path(dir_path) / f"{prefix or ''}{MODEL_FILE}"


ADDED_PARAMETERS: dict[str, Any] = {"encoder_skip": False}
"""Model parameters added after files were first written, and the value they had before:
a file without one of them loads with that value, so it rebuilds the network it saved."""

_FRAME = "__dataframe__"


def _encode(value: Any) -> Any:
    """``value`` in the types that torch's restricted unpickler reads.

    DataFrames become dicts of arrays and lists, ``defaultdict`` becomes ``dict``
    (:func:`_decode` undoes the first).
    """
    if isinstance(value, pd.DataFrame):
        return {
            _FRAME: {
                "values": value.to_numpy(),
                "index": value.index.tolist(),
                "index_name": value.index.name,
                "columns": value.columns.tolist(),
            }
        }
    if isinstance(value, dict):
        return {key: _encode(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_encode(item) for item in value]
    return value


def _decode(value: Any) -> Any:
    """The inverse of :func:`_encode`."""
    if isinstance(value, dict) and set(value) == {_FRAME}:
        frame = value[_FRAME]
        index = pd.Index(frame["index"], name=frame["index_name"])
        return pd.DataFrame(frame["values"], index=index, columns=frame["columns"])
    if isinstance(value, dict):
        return {key: _decode(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_decode(item) for item in value]
    return value


def encode_attributes(attributes: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """A model's ``(name, value)`` attributes as :func:`_encode` stores them."""
    return [(name, _encode(value) if name.endswith("_") else value) for name, value in attributes]


def read_model_file(path: Path, map_location: Any = "cpu") -> dict:
    """The contents of a saved model file, read with torch's restricted unpickler.

    Raises
    ------
    ValueError
        When the file is missing, or holds anything but tensors, plain containers and numpy
        arrays (a file not written by :meth:`BatchCorrectedSCETM.save`, or changed since).
    """
    if not path.exists():
        raise ValueError(
            f"No model file at {path}. Pass the folder written by model.save(dir_path) "
            "(and the same prefix=, if one was used)."
        )
    try:
        with torch.serialization.safe_globals(safe_globals()):
            saved = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as error:
        raise ValueError(
            f"{path} is not a model file written by BatchCorrectedSCETM.save, or it was "
            "changed since: it cannot be read safely (with torch.load(weights_only=True)). "
            "Save the model again with this version of scetm_mnn; never load model files "
            f"from sources you do not trust. Reason: {str(error).splitlines()[0]}"
        ) from error
    if not isinstance(saved, dict) or not {"model_state_dict", "attr_dict"} <= saved.keys():
        raise ValueError(f"{path} does not hold a saved scvi-tools model.")
    saved["attr_dict"] = _decode(saved["attr_dict"])
    init_params = saved["attr_dict"].get("init_params_")
    if init_params is not None:  # as the model was when the file was written
        non_kwargs = init_params.setdefault("non_kwargs", {})
        given = non_kwargs.keys() | init_params.get("kwargs", {}).get("module_kwargs", {}).keys()
        for name, before in ADDED_PARAMETERS.items():
            if name not in given:
                non_kwargs[name] = before
    return saved
