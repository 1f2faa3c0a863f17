"""Model files that load with ``torch.load(..., weights_only=True)``.

scvi-tools writes ``model.pt`` with pandas DataFrames inside (the training history) and
reads it back with ``weights_only=False``, which runs arbitrary code from a tampered file.
The model hands scvi-tools its saved attributes already encoded
(:func:`encode_attributes`), so the file it writes holds plain data only.
Here DataFrames are stored as plain arrays and lists, and the file is read with torch's
restricted unpickler: tensors, numbers, strings, containers and numpy arrays only.
"""

from __future__ import annotations

import itertools
import os
import pickletools
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from .._atomic import recover_dir

MODEL_FILE = "model.pt"
"""The model file's name (after the prefix), as scvi-tools names it."""
FORMAT = 1
"""Version of the model file's layout, saved as the attribute ``FORMAT_KEY``; files written
before it was saved have none and are layout 1. :func:`read_model_file` refuses newer ones."""
FORMAT_KEY = "scetm_mnn_format_"


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


ADDED_PARAMETERS: dict[str, Any] = {"encoder_skip": False, "conformal_encoder": False}
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


def _named_model(path: Path) -> str | None:
    """The ``model_name`` a torch model file names, read from its pickle without running it.

    The pickle's opcodes are listed (:func:`pickletools.genops`), never executed: the string
    that follows the key ``"model_name"`` (scvi-tools' registry) is the model's class.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            name = next(n for n in archive.namelist() if n.endswith("data.pkl"))
            ops = pickletools.genops(archive.read(name))
            strings = [arg for _, arg, _ in ops if isinstance(arg, str)]
    except Exception:  # anything unreadable: no name
        return None
    found = [b for a, b in itertools.pairwise(strings) if a == "model_name"]
    return found[0] if found else None


def _unreadable(path: Path, error: Exception) -> ValueError:
    """The one error for a model file that torch's restricted unpickler cannot read."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in str(error).splitlines()]
    lines = [line for line in lines if line] or [type(error).__name__]
    # torch's weights-only refusal is a page of advice; its one line of reason is this one.
    reason = next((line for line in lines if line.startswith("WeightsUnpickler")), lines[0])
    reason = reason.split(". Please use", 1)[0]
    named = _named_model(path)
    if named is not None and named != "BatchCorrectedSCETM":
        return ValueError(
            f"{path} is a saved scvi-tools {named} model, not a BatchCorrectedSCETM: load "
            f"it with {named}.load (this loader reads plain data only; reason: {reason})."
        )
    if zipfile.is_zipfile(path) or named is not None:
        what = "holds objects other than tensors and plain data, or was changed since"
    elif path.stat().st_size == 0:
        what = "is empty"
    else:
        what = "is not a torch model file (truncated, or another kind of file, e.g. a pickle)"
    return ValueError(
        f"{path} {what}: it is not a model file written by BatchCorrectedSCETM.save and "
        "cannot be read safely (with torch.load(weights_only=True)). Save the model again "
        "with this version of scetm_mnn; never load model files from sources you do not "
        f"trust. Reason: {reason}"
    )


def read_model_file(path: Path, map_location: Any = "cpu") -> dict:
    """The contents of a saved model file, read with torch's restricted unpickler.

    Raises
    ------
    FileNotFoundError
        When the file is missing.
    ValueError
        When the file is truncated, not a torch file, holds anything but tensors, plain
        containers and numpy arrays (a file not written by :meth:`BatchCorrectedSCETM.save`,
        another scvi-tools model's, or one changed since), or has a newer layout.
    """
    recover_dir(path.parent)  # a folder that a killed save left renamed away
    if path.is_dir() or not path.exists():
        raise FileNotFoundError(
            f"No model file at {path}. Pass the folder written by model.save(dir_path) "
            "(and the same prefix=, if one was used)."
        )
    try:
        with torch.serialization.safe_globals(safe_globals()):
            saved = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # truncated, foreign, pickled objects: one clear error
        raise _unreadable(path, error) from error
    if not isinstance(saved, dict) or not {"model_state_dict", "attr_dict"} <= saved.keys():
        raise ValueError(
            f"{path} does not hold a saved scvi-tools model (no model_state_dict and "
            "attr_dict): it was not written by BatchCorrectedSCETM.save."
        )
    layout = saved["attr_dict"].pop(FORMAT_KEY, 1)
    if not isinstance(layout, int) or layout > FORMAT:
        raise ValueError(
            f"{path} has model file layout {layout!r}, written by a newer scetm-mnn; this "
            f"version reads layouts up to {FORMAT}. Upgrade scetm-mnn to load it."
        )
    saved["attr_dict"] = _decode(saved["attr_dict"])
    init_params = saved["attr_dict"].get("init_params_")
    if init_params is not None:  # as the model was when the file was written
        non_kwargs = init_params.setdefault("non_kwargs", {})
        given = non_kwargs.keys() | init_params.get("kwargs", {}).get("module_kwargs", {}).keys()
        for name, before in ADDED_PARAMETERS.items():
            if name not in given:
                non_kwargs[name] = before
    return saved
