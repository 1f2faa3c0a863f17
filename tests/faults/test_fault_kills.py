"""SIGKILL during ``model.save`` and ``MNNCorrector.save``: the saved files survive.

A forked child saves over and over, each save a new version (a parameter set to the save's
number, and for the model the saved AnnData's ``uns`` too, so that a folder mixing two saves
is caught); the test kills it at a random moment, which mostly falls inside a save. After
every kill the target loads, holds one whole version, and no version older than the last
save the child finished. Killing at chosen points (between the two renames of a corrector
pair; between the renames of a folder swap) checks the recoveries. The next save leaves no
temporary behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from scetm_mnn import _atomic
from scetm_mnn.model import BatchCorrectedSCETM
from scetm_mnn.pp import MNNCorrector

KILLS = int(os.environ.get("SCETM_MNN_KILLS", "8"))
"""Random kills per saver: 8 in CI; set ``SCETM_MNN_KILLS`` for a longer run."""


def kill_self() -> None:
    """SIGKILL this process: no cleanup, no ``finally``, as the kernel's OOM killer does."""
    os.kill(os.getpid(), signal.SIGKILL)


def _litter(target: Path) -> list[str]:
    """What writes of ``target`` left: hidden siblings (temporaries, renamed-away folders),
    and the hidden files in it (a corrector's temporaries)."""
    inside = list(target.glob(".*")) if target.is_dir() else []
    return sorted(p.name for p in [*target.parent.glob(f".{target.name}.*"), *inside])


def _model_version(path: Path) -> int:
    loaded = BatchCorrectedSCETM.load(path)  # with the AnnData saved beside it
    weight = next(iter(loaded.module.parameters())).detach()
    version = int(weight.flatten()[0])
    assert torch.all(weight == version), "a mix of two saves' weights"
    assert loaded.adata.uns["save"] == version, "model.pt and adata.h5ad of different saves"
    return version


def _save_model(model, path: Path, version: int) -> None:
    with torch.no_grad():
        next(iter(model.module.parameters())).fill_(version)
    model.adata.uns["save"] = version
    model.save(path, overwrite=True, save_anndata=True)


def _corrector_version(path: Path) -> int:
    loaded = MNNCorrector.load(path)
    version = int(loaded._fit_id.rsplit("-", 1)[1])
    bias = next(iter(loaded.net_.parameters())).detach()
    assert torch.all(bias == version), "a .pt file and a sidecar of different saves"
    return version


def _save_corrector(corrector, path: Path, version: int) -> None:
    corrector._fit_id = f"save-{version}"
    with torch.no_grad():
        next(iter(corrector.net_.parameters())).fill_(version)
    corrector.save(path, overwrite=True)


SAVERS = {
    "model": (lambda m, c: m, _save_model, _model_version, lambda tmp: tmp / "model"),
    "corrector": (lambda m, c: c, _save_corrector, _corrector_version, lambda tmp: tmp / "corr"),
}


@pytest.mark.parametrize("kind", SAVERS)
def test_random_kills_during_saves(kind, tiny_model, tiny_corrector, fork_child, tmp_path):
    pick, save, version_of, where = SAVERS[kind]
    thing, target = pick(tiny_model, tiny_corrector), where(tmp_path)
    save(thing, target, 0)
    tic = time.perf_counter()
    save(thing, target, 0)
    seconds = time.perf_counter() - tic
    rng = np.random.default_rng(0)
    outcomes = {"old or newer whole version": 0, "temporaries left": 0}
    for kill in range(KILLS):

        def saver(conn, start=1000 * (kill + 1)):
            for version in range(start, start + 10_000):
                save(thing, target, version)
                conn.send(version)

        process, conn = fork_child(saver)
        done = conn.recv()  # one whole save first, then a kill at a random moment
        time.sleep(rng.uniform(0, 2 * seconds))
        process.kill()
        process.join(10)
        with contextlib.suppress(EOFError):  # the dead child's end of the pipe
            while conn.poll():
                done = conn.recv()
        version = version_of(target)
        assert version >= done, f"kill {kill}: the last finished save ({done}) was lost"
        outcomes["old or newer whole version"] += 1
        outcomes["temporaries left"] += bool(_litter(target))
    print(kind, outcomes)
    assert outcomes["old or newer whole version"] == KILLS
    save(thing, target, 1)  # the next save cleans what the killed ones left
    assert _litter(target) == [] and version_of(target) == 1


def _killed_at(fork_child, action, patch) -> None:
    """Run ``action`` in a child that ``patch`` arranges to SIGKILL itself; wait for it."""

    def child(conn):
        patch()
        action()
        conn.send("not killed")

    process, _ = fork_child(child)
    process.join(30)
    assert process.exitcode == -signal.SIGKILL, "the child was not killed"


def _kill_on_call(module, name: str, call: int) -> None:
    """Make ``module.name``'s ``call``-th call SIGKILL the process instead."""
    real, calls = getattr(module, name), []

    def patched(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            kill_self()
        return real(*args, **kwargs)

    setattr(module, name, patched)


def test_a_kill_between_the_pair_renames_is_rolled_forward(tiny_corrector, fork_child, tmp_path):
    target = tmp_path / "corr"
    _save_corrector(tiny_corrector, target, 1)
    # Killed after corrector.pt is in place, before corrector.json: the new .pt beside
    # the old sidecar, and the new sidecar complete as a temporary.
    save_2 = lambda: _save_corrector(tiny_corrector, target, 2)  # noqa: E731
    _killed_at(fork_child, save_2, lambda: _kill_on_call(_atomic.os, "replace", 2))
    assert json.loads((target / "corrector.json").read_text())["fit_id"] == "save-1"
    assert len(_litter(target / "corrector.json")) == 1
    # The next save completes that pair first (its one os.replace), and is killed before
    # renaming its own files: the completed pair survives, not the stale sidecar of 1.
    save_3 = lambda: _save_corrector(tiny_corrector, target, 3)  # noqa: E731
    _killed_at(fork_child, save_3, lambda: _kill_on_call(_atomic.os, "replace", 2))
    assert json.loads((target / "corrector.json").read_text())["fit_id"] == "save-2"
    assert _corrector_version(target) == 2
    _save_corrector(tiny_corrector, target, 4)
    assert _corrector_version(target) == 4
    assert _litter(target) == []


def test_a_kill_between_the_folder_renames_is_recovered(tiny_model, fork_child, tmp_path):
    """Without ``renameat2``: killed after the old folder is renamed away, before the new one
    is renamed in. The target is missing; load puts the old folder back."""
    target = tmp_path / "model"
    _save_model(tiny_model, target, 1)

    def patch():
        _atomic._exchange = lambda a, b: False
        _kill_on_call(_atomic.os, "rename", 2)

    _killed_at(fork_child, lambda: _save_model(tiny_model, target, 2), patch)
    assert not target.exists() and any(".old-" in n for n in _litter(target))
    assert _model_version(target) == 1  # recovered by load
    _save_model(tiny_model, target, 3)
    assert _litter(target) == [] and _model_version(target) == 3


def test_a_kill_after_the_swap_leaves_the_new_folder(tiny_model, fork_child, tmp_path):
    target = tmp_path / "model"
    _save_model(tiny_model, target, 1)
    # After the exchange, before the old folder (now the temporary) is deleted.
    _killed_at(
        fork_child,
        lambda: _save_model(tiny_model, target, 2),
        lambda: _kill_on_call(_atomic, "_remove", 1),
    )
    assert _model_version(target) == 2
    _save_model(tiny_model, target, 3)
    assert _litter(target) == []


def test_overwrite_false_refuses_without_touching(tiny_model, tiny_corrector, tmp_path):
    model_dir, corrector_dir = tmp_path / "model", tmp_path / "corr"
    _save_model(tiny_model, model_dir, 1)
    _save_corrector(tiny_corrector, corrector_dir, 1)
    stamps = {p: p.stat().st_mtime_ns for d in (model_dir, corrector_dir) for p in d.iterdir()}
    with pytest.raises(FileExistsError, match="overwrite=True"):
        tiny_model.save(model_dir)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        tiny_corrector.save(corrector_dir)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_swap_keeps_the_files_the_save_does_not_write(tiny_model, tmp_path, monkeypatch):
    target = tmp_path / "models"
    tiny_model.save(target, prefix="a_")
    tiny_model.save(target, prefix="b_", overwrite=True)  # the folder of a_ is swapped
    (target / "notes.txt").write_text("mine")
    tiny_model.save(target, prefix="a_", overwrite=True)
    assert sorted(os.listdir(target)) == ["a_model.pt", "b_model.pt", "notes.txt"]
    BatchCorrectedSCETM.load(target, adata=tiny_model.adata, prefix="b_")
    monkeypatch.chdir(target)
    with pytest.raises(ValueError, match="current folder"):
        tiny_model.save(target, prefix="a_", overwrite=True)
    assert (target / "notes.txt").read_text() == "mine"
