"""Files that are not ours: each ``load`` raises one clear error that names the file and why.

For the model folder and for the corrector pair: a missing file, an empty one, a truncated
one, random bytes, a pickle (with an object that must never be built), a newer layout,
and, for the model, the folder of another scvi-tools model. Nothing is unpickled.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import scvi
import torch

from scetm_mnn.model import BatchCorrectedSCETM
from scetm_mnn.model._serialization import safe_globals
from scetm_mnn.pp import MNNCorrector

RAN = []


class _Exploit:
    def __reduce__(self):
        return (RAN.append, ("unpickled",))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _newer_model(path: Path) -> None:
    with torch.serialization.safe_globals(safe_globals()):
        saved = torch.load(path, weights_only=True)
    saved["attr_dict"]["scetm_mnn_format_"] = 99
    torch.save(saved, path)


MODEL_CASES = {
    "missing": (lambda p: p.unlink(), FileNotFoundError, ["No model file"]),
    "empty": (lambda p: p.write_bytes(b""), ValueError, ["is empty"]),
    "truncated": (_truncate, ValueError, ["not a torch model file", "truncated"]),
    "random bytes": (
        lambda p: p.write_bytes(np.random.default_rng(0).bytes(5000)),
        ValueError,
        ["not a torch model file"],
    ),
    "pickle": (
        lambda p: p.write_bytes(pickle.dumps({"model_state_dict": _Exploit(), "attr_dict": {}})),
        ValueError,
        ["cannot be read safely"],
    ),
    "plain dict": (lambda p: torch.save({"a": 1}, p), ValueError, ["does not hold a saved"]),
    "newer layout": (_newer_model, ValueError, ["layout 99", "newer scetm-mnn", "Upgrade"]),
}


@pytest.fixture(scope="module")
def saved(tiny_model, tiny_corrector, tmp_path_factory) -> dict[str, Path]:
    """The tiny model and corrector, each saved once for the module."""
    folder = tmp_path_factory.mktemp("saved")
    tiny_model.save(folder / "model")
    tiny_corrector.save(folder / "corrector")
    return {"model": folder / "model", "corrector": folder / "corrector"}


def _assert_one_clear_error(load, spoiled: Path, spoil, kind, named: str, words) -> None:
    """``load()`` of the copy ``spoiled`` raises one ``kind`` naming ``named`` and ``words``."""
    spoil(spoiled)
    with pytest.raises(kind) as raised:
        load(spoiled)
    message = str(raised.value)
    assert str(spoiled / named) in message, message
    for word in words:
        assert word in message, (word, message)
    assert RAN == []  # nothing of the file ran


@pytest.mark.parametrize("case", MODEL_CASES)
def test_a_broken_model_file(case, saved, tiny_model, tmp_path):
    spoil, kind, words = MODEL_CASES[case]
    folder = shutil.copytree(saved["model"], tmp_path / "model")
    load = lambda f: BatchCorrectedSCETM.load(f, adata=tiny_model.adata)  # noqa: E731
    _assert_one_clear_error(load, folder, lambda f: spoil(f / "model.pt"), kind, "model.pt", words)


def test_the_folder_of_another_scvi_tools_model(tiny_model, tmp_path):
    adata = tiny_model.adata.copy()
    scvi.model.SCVI.setup_anndata(adata, batch_key="batch")
    scvi.model.SCVI(adata, n_latent=2, n_hidden=8).save(tmp_path / "scvi")
    with pytest.raises(ValueError) as raised:
        BatchCorrectedSCETM.load(tmp_path / "scvi", adata=tiny_model.adata)
    message = str(raised.value)
    assert str(tmp_path / "scvi" / "model.pt") in message
    assert "SCVI model, not a BatchCorrectedSCETM" in message and "SCVI.load" in message


def test_the_saved_model_still_loads(saved, tiny_model):
    loaded = BatchCorrectedSCETM.load(saved["model"], adata=tiny_model.adata)
    assert not hasattr(loaded, "scetm_mnn_format_")  # the layout number is not an attribute
    np.testing.assert_array_equal(
        loaded.get_latent_representation(), tiny_model.get_latent_representation()
    )


def _meta(update: dict):
    def spoil(folder: Path) -> None:
        sidecar = folder / "corrector.json"
        sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), **update}))

    return spoil


CORRECTOR_CASES = {
    "missing .pt": (
        lambda f: (f / "corrector.pt").unlink(),
        FileNotFoundError,
        "corrector.pt",
        ["does not exist"],
    ),
    "missing sidecar": (
        lambda f: (f / "corrector.json").unlink(),
        FileNotFoundError,
        "corrector.json",
        ["does not exist"],
    ),
    "truncated .pt": (
        lambda f: _truncate(f / "corrector.pt"),
        ValueError,
        "corrector.pt",
        ["not a corrector file", "truncated"],
    ),
    "random .pt": (
        lambda f: (f / "corrector.pt").write_bytes(np.random.default_rng(1).bytes(3000)),
        ValueError,
        "corrector.pt",
        ["not a corrector file"],
    ),
    "pickled .pt": (
        lambda f: (f / "corrector.pt").write_bytes(pickle.dumps({"net": _Exploit()})),
        ValueError,
        "corrector.pt",
        ["cannot be read safely"],
    ),
    "tensors of something else": (
        lambda f: torch.save({"weight": torch.zeros(3)}, f / "corrector.pt"),
        ValueError,
        "corrector.pt",
        ["does not hold a corrector"],
    ),
    "truncated sidecar": (
        lambda f: _truncate(f / "corrector.json"),
        ValueError,
        "corrector.json",
        ["not a corrector sidecar"],
    ),
    "sidecar of random bytes": (
        lambda f: (f / "corrector.json").write_bytes(np.random.default_rng(2).bytes(300)),
        ValueError,
        "corrector.json",
        ["not a corrector sidecar"],
    ),
    "newer layout": (_meta({"format": 2}), ValueError, "corrector.json", ["layout 2", "Upgrade"]),
    "another fit's sidecar": (
        _meta({"fit_id": "another"}),
        ValueError,
        "corrector.json",
        ["not saved together"],
    ),
}


@pytest.mark.parametrize("case", CORRECTOR_CASES)
def test_a_broken_corrector_file(case, saved, tmp_path):
    spoil, kind, named, words = CORRECTOR_CASES[case]
    folder = shutil.copytree(saved["corrector"], tmp_path / "corrector")
    _assert_one_clear_error(MNNCorrector.load, folder, spoil, kind, named, words)
