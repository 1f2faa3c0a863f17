"""The CLI on bad input: one line on stderr and exit status 2, never a traceback.

Each row of ``CASES`` is one mistake a user makes (a missing or broken file, a wrong key, data
that are not counts, an output folder that cannot be written or holds a run, a bad option
value). Every one fails before any training, so the table runs in seconds. Crashes, and
``--debug``, still show the traceback.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import sparse

import scetm_mnn as sm
from scetm_mnn import cli
from scetm_mnn.cli import main


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """Small h5ad files, each with one problem (``good`` has none)."""
    folder = tmp_path_factory.mktemp("inputs")
    adata = sm.datasets.simulate(n_cells=120, n_genes=40, n_batches=2, random_state=0)
    files = {}

    def write(name, data):
        files[name] = folder / f"{name}.h5ad"
        data.write_h5ad(files[name])

    write("good", adata)
    logged = adata.copy()
    logged.X = logged.X.log1p()
    write("logged", logged)
    with_nan = adata.copy()
    with_nan.X = with_nan.X.astype(np.float32)
    with_nan.X.data[0] = np.nan
    write("nan", with_nan)
    negative = adata.copy()
    negative.X = sparse.csr_matrix(-negative.X.toarray())
    write("negative", negative)
    one_batch = adata.copy()
    one_batch.obs["batch"] = "only"
    write("one_batch", one_batch)
    files["random"] = folder / "random.h5ad"
    files["random"].write_bytes(np.random.default_rng(0).bytes(4096))
    files["truncated"] = folder / "truncated.h5ad"
    files["truncated"].write_bytes(files["good"].read_bytes()[:3000])
    files["folder"] = folder / "a_folder.h5ad"
    files["folder"].mkdir()
    return files


def _existing_run(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.html").write_text("an earlier run")


def _out_is_a_file(out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("not a folder")


def _no_permission(monkeypatch) -> None:
    # Portable (root writes anywhere): the probe write of --out is refused.
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(kwargs.get("dir")))

    monkeypatch.setattr("scetm_mnn._cli_errors.tempfile.TemporaryFile", refuse)


RUN = ["run", "{good}", "--batch-key", "batch"]
# (id, argv with {name} for an input and {out} for the output folder, setup, words in the message)
CASES = [
    (
        "missing input",
        ["run", "{out}/nope.h5ad", "--batch-key", "batch"],
        None,
        ["nope.h5ad", "does not exist"],
    ),
    ("input is a folder", ["run", "{folder}", "--batch-key", "batch"], None, ["is a folder"]),
    (
        "input is random bytes",
        ["run", "{random}", "--batch-key", "batch"],
        None,
        ["random.h5ad", "not a readable .h5ad"],
    ),
    (
        "input is truncated",
        ["run", "{truncated}", "--batch-key", "batch"],
        None,
        ["truncated.h5ad", "not a readable .h5ad"],
    ),
    (
        "wrong batch key",
        ["run", "{good}", "--batch-key", "donor"],
        None,
        ["'donor'", "not a column", "'batch'"],
    ),
    ("wrong label key", [*RUN, "--label-key", "celltype"], None, ["'celltype'", "not a column"]),
    (
        "wrong counts layer",
        [*RUN, "--counts-layer", "raw"],
        None,
        ["'raw'", "not found in adata.layers"],
    ),
    (
        "not counts",
        ["run", "{logged}", "--batch-key", "batch"],
        None,
        ["non-integer", "raw counts"],
    ),
    ("NaN", ["run", "{nan}", "--batch-key", "batch"], None, ["NaN or infinite"]),
    ("negative values", ["run", "{negative}", "--batch-key", "batch"], None, ["negative values"]),
    (
        "one batch",
        ["run", "{one_batch}", "--batch-key", "batch"],
        None,
        ["single batch", "'batch'"],
    ),
    ("out is a file", RUN, _out_is_a_file, ["is a file", "--out"]),
    ("out not writable", RUN, "no_permission", ["cannot be written", "--out"]),
    ("earlier run in out", RUN, _existing_run, ["already holds", "report.html", "--overwrite"]),
    ("demo over an earlier run", ["demo"], _existing_run, ["already holds", "--overwrite"]),
    ("max-cells 1", [*RUN, "--max-cells", "1"], None, ["max_cells must be at least 2"]),
    ("max-epochs 0", [*RUN, "--max-epochs", "0"], None, ["--max-epochs", "must be at least 1"]),
    (
        "max-epochs not a number",
        [*RUN, "--max-epochs", "ten"],
        None,
        ["--max-epochs", "'ten' is not a whole number"],
    ),
    ("negative mnn-weight", [*RUN, "--mnn-weight", "-1"], None, ["--mnn-weight", "at least 0"]),
    ("NaN mnn-weight", [*RUN, "--mnn-weight", "nan"], None, ["--mnn-weight", "finite"]),
    ("n-top-genes 0", [*RUN, "--n-top-genes", "0"], None, ["--n-top-genes", "at least 1"]),
    ("no batch key", ["run", "{good}"], None, ["--batch-key", "required"]),
    (
        "missing gene-set file",
        [*RUN, "--gene-sets", "{out}/nope.gmt"],
        None,
        ["No GMT file", "nope.gmt"],
    ),
    (
        "gene-set file not GMT",
        [*RUN, "--gene-sets", "{random}"],
        None,
        ["random.h5ad", "is not a GMT file"],
    ),
    ("unknown option", [*RUN, "--epochs", "3"], None, ["unrecognized arguments", "--epochs"]),
    (
        "unknown data set",
        ["demo", "--dataset", "pbmc"],
        None,
        ["--dataset", "invalid choice", "'pbmc'"],
    ),
]


@pytest.mark.parametrize(
    ("argv", "setup", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_a_user_error_is_one_line_and_status_2(
    argv, setup, words, inputs, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "out"
    if setup == "no_permission":
        _no_permission(monkeypatch)
    elif setup is not None:
        setup(out)
    before = sorted(os.listdir(out)) if out.is_dir() else None
    args = [a.format(out=out, **{k: str(v) for k, v in inputs.items()}) for a in argv]
    if "--out" not in args and (args[0] == "run" or setup is not None):
        args += ["--out", str(out)]
    try:
        code = main(args)
    except SystemExit as exited:  # argparse's refusals
        code = exited.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1, err
    assert "Traceback" not in err and lines[0].startswith("scetm-mnn")
    assert ": error: " in lines[0]
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert not (out / "model").exists()  # nothing of a run was written
    if before is not None and out.is_dir():
        assert sorted(os.listdir(out)) == before  # an existing folder is left as it was


def test_the_table_has_at_least_15_cases():
    assert len(CASES) >= 15 and len({c[0] for c in CASES}) == len(CASES)


def test_a_read_only_out_folder(inputs, tmp_path, capsys):
    """A real read-only file system (a tmpfs mounted ro), which refuses root too."""
    folder = tmp_path / "ro"
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(folder)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        code = main(
            ["run", str(inputs["good"]), "--batch-key", "batch", "--out", str(folder / "out")]
        )
    finally:
        subprocess.run(["umount", str(folder)], check=False)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert "cannot be written" in err or "Read-only file system" in err, err


def test_debug_shows_the_traceback_of_a_user_error(inputs, tmp_path, capsys):
    code = main(
        ["run", str(inputs["good"]), "--batch-key", "donor", "--out", str(tmp_path), "--debug"]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("scetm-mnn: error: ")


def test_a_crash_keeps_its_traceback(inputs, tmp_path, monkeypatch):
    def crash(*args, **kwargs):
        raise RuntimeError("a bug, not the user's input")

    monkeypatch.setattr(cli, "run_pipeline", crash)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["run", str(inputs["good"]), "--batch-key", "batch", "--out", str(tmp_path / "o")])


def test_a_type_error_of_a_bug_is_a_crash(inputs, tmp_path, monkeypatch):
    def crash(*args, **kwargs):
        raise TypeError("unsupported operand")

    monkeypatch.setattr(cli, "run_pipeline", crash)
    with pytest.raises(TypeError):
        main(["run", str(inputs["good"]), "--batch-key", "batch", "--out", str(tmp_path / "o")])


def test_the_installed_command_prints_one_line(inputs, tmp_path):
    """End to end, in a fresh interpreter: stderr holds the one line and nothing else."""
    argv = ["run", str(inputs["good"]), "--batch-key", "donor", "--out", str(tmp_path)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(
        [sys.executable, "-m", "scetm_mnn.cli", *argv], capture_output=True, text=True, env=env
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "'donor'" in lines[0] and "Traceback" not in done.stderr
