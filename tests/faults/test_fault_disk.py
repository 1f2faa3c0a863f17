"""A full disk: every write fails with one clear ``ENOSPC`` error and leaves no partial file.

On a small tmpfs (mounted for the test; skipped where mounting is not permitted) the disk
really runs out, in the middle of a write; a portable version makes the writer raise
``ENOSPC`` after writing half its bytes. Either way the old file or folder is unchanged,
and nothing new is left on the disk.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import traceback
from pathlib import Path

import anndata as ad
import pytest
import torch

from scetm_mnn import _atomic, cli
from scetm_mnn._pipeline import PipelineResult
from scetm_mnn.model import BatchCorrectedSCETM
from scetm_mnn.pp import MNNCorrector

# h5py reports the writes its objects could not flush on the full disk as they are freed.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

SIZE = 4 << 20
"""Bytes of the test's tmpfs."""


@pytest.fixture
def disk(tmp_path):
    """A fresh 4 MiB tmpfs, unmounted afterwards; skips where it cannot be mounted."""
    if sys.platform != "linux":
        pytest.skip("tmpfs needs Linux")
    folder = tmp_path / "disk"
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={SIZE}", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {mounted.stderr.strip()}")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(disk: Path, leave: int) -> None:
    """Fill ``disk`` until ``leave`` bytes are free."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * (1 << 16))
        except OSError as err:
            assert err.errno == errno.ENOSPC
    size = filler.stat().st_size
    os.truncate(filler, max(0, size - leave))


def _files(folder: Path) -> dict[str, int]:
    """Every file under ``folder`` (hidden ones too) and its size."""
    return {
        str(p.relative_to(folder)): p.stat().st_size
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _in_child(fork_child, body) -> None:
    """Run ``body()`` in a forked child and fail here with its traceback if it fails.

    HDF5 keeps the objects of an h5ad it could not flush on the full disk open, and closes
    them only as the interpreter exits, where it crashes (h5py; a segfault after the test
    passed). A forked child ends without that shutdown, so the crash cannot take pytest down.
    """

    def target(conn) -> None:
        try:
            body()
            conn.send("ok")
        except BaseException:  # every failure goes back to the parent
            conn.send(traceback.format_exc())

    process, conn = fork_child(target)
    message = conn.recv() if conn.poll(120) else "the child sent nothing within 120 s"
    process.join(30)
    assert message == "ok", message


def _assert_disk_full(error: pytest.ExceptionInfo, target: Path) -> None:
    assert error.value.errno == errno.ENOSPC
    assert str(target) in str(error.value) and "space" in str(error.value)


def test_model_save_on_a_full_disk(tiny_model, disk, monkeypatch, fork_child):
    _in_child(fork_child, lambda: _model_save_on_a_full_disk(tiny_model, disk, monkeypatch))


def _model_save_on_a_full_disk(tiny_model, disk, monkeypatch):
    target = disk / "model"
    tiny_model.save(target, save_anndata=True)
    fill(disk, leave=8 << 10)
    before = _files(disk)
    # The check before the write refuses first, naming the path and the bytes.
    with pytest.raises(OSError, match="Not enough free disk space") as refused:
        tiny_model.save(target, overwrite=True, save_anndata=True)
    _assert_disk_full(refused, target)
    assert _files(disk) == before
    # Past the check (an estimate that was wrong, a disk filled by another job): the
    # disk runs out in the middle of the write.
    monkeypatch.setattr("scetm_mnn.model._save_load.check_free_space", lambda *a, **k: None)
    with pytest.raises(OSError, match="ran out of space") as failed:
        tiny_model.save(target, overwrite=True, save_anndata=True)
    _assert_disk_full(failed, target)
    assert _files(disk) == before  # no partial file, the old folder unchanged
    BatchCorrectedSCETM.load(target)


def test_corrector_save_on_a_full_disk(tiny_corrector, disk, monkeypatch):
    target = disk / "corrector"
    tiny_corrector.save(target)
    fill(disk, leave=4 << 10)
    before = _files(disk)
    with pytest.raises(OSError, match="Not enough free disk space to write the corrector"):
        tiny_corrector.save(target, overwrite=True)
    assert _files(disk) == before
    monkeypatch.setattr("scetm_mnn.pp._persistence.check_free_space", lambda *a, **k: None)
    with pytest.raises(OSError, match="ran out of space") as failed:
        tiny_corrector.save(target, overwrite=True)
    assert failed.value.errno == errno.ENOSPC and str(target) in str(failed.value)
    assert _files(disk) == before
    assert MNNCorrector.load(target).genes_ == tiny_corrector.genes_


def test_text_and_h5ad_outputs_on_a_full_disk(tiny_model, disk, fork_child):
    _in_child(fork_child, lambda: _text_and_h5ad_outputs_on_a_full_disk(tiny_model, disk))


def _text_and_h5ad_outputs_on_a_full_disk(tiny_model, disk):
    (disk / "report.html").write_text("the old report")
    fill(disk, leave=4 << 10)
    before = _files(disk)
    with pytest.raises(OSError, match="ran out of space") as failed:
        _atomic.write_text(disk / "report.html", "x" * (64 << 10))
    _assert_disk_full(failed, disk / "report.html")
    with pytest.raises(OSError, match="ran out of space"):
        with _atomic.atomic_path(disk / "out.h5ad") as temporary:
            tiny_model.adata.write_h5ad(temporary)
    assert _files(disk) == before and (disk / "report.html").read_text() == "the old report"


def test_the_cli_refuses_an_h5ad_that_does_not_fit(
    tiny_model, disk, tmp_path, monkeypatch, capsys
):
    path = tmp_path / "input.h5ad"
    tiny_model.adata.write_h5ad(path)
    result = PipelineResult(adata=tiny_model.adata.copy(), model=tiny_model)
    monkeypatch.setattr(cli, "run_pipeline", lambda adata, **kwargs: result)
    fill(disk, leave=16 << 10)
    before = _files(disk)
    code = cli.main(["run", str(path), "--batch-key", "batch", "--out", str(disk / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert "Not enough free disk space" in err and "input_scetm_mnn.h5ad" in err
    assert _files(disk) == before


def _half_then_enospc(real):
    """A ``torch.save`` that writes half of what it would and then finds the disk full."""

    def save(obj, path, *args, **kwargs):
        real(obj, path, *args, **kwargs)
        data = Path(path).read_bytes()
        Path(path).write_bytes(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    return save


@pytest.mark.parametrize("kind", ["model", "corrector"])
def test_enospc_mid_write_portable(kind, tiny_model, tiny_corrector, tmp_path, monkeypatch):
    """The same without a tmpfs: the writer raises ENOSPC after writing half the file."""
    target = tmp_path / kind
    thing = tiny_model if kind == "model" else tiny_corrector
    thing.save(target)
    before = _files(tmp_path)
    monkeypatch.setattr(torch, "save", _half_then_enospc(torch.save))
    with pytest.raises(OSError, match="ran out of space") as failed:
        thing.save(target, overwrite=True)
    _assert_disk_full(failed, target)
    assert _files(tmp_path) == before
    monkeypatch.undo()
    if kind == "model":
        BatchCorrectedSCETM.load(target, adata=tiny_model.adata)
    else:
        MNNCorrector.load(target)


def test_an_interrupt_mid_write_leaves_nothing(tmp_path):
    target = tmp_path / "costs.csv"
    target.write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with _atomic.atomic_file(target) as handle:
            handle.write("new, half")
            raise KeyboardInterrupt
    assert os.listdir(tmp_path) == ["costs.csv"] and target.read_text() == "old"


def test_an_h5ad_is_written_whole(tmp_path):
    target = tmp_path / "result.h5ad"
    with _atomic.atomic_path(target) as temporary:
        ad.AnnData(obs={"a": [1, 2]}).write_h5ad(temporary)
        assert not target.exists()  # nothing at the target until the file is whole
    assert ad.read_h5ad(target).n_obs == 2 and os.listdir(tmp_path) == ["result.h5ad"]
