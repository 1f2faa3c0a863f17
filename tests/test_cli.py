import logging
import re

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from scetm_mnn.cli import build_parser, main


@pytest.fixture(scope="module")
def h5ad(tmp_path_factory, sim_adata):
    path = tmp_path_factory.mktemp("cli") / "input.h5ad"
    adata = sim_adata.copy()
    adata.layers["counts"] = adata.X.copy()
    adata.X = adata.X.log1p()  # X is not counts; the counts live in a layer
    adata.write_h5ad(path)
    return path


def test_parser_defaults():
    args = build_parser().parse_args(["demo"])
    assert args.dataset == "simulated" and args.out == "demo_output" and args.seed == 0


PHASES = ("preprocess", "correct", "train", "latent", "evaluate", "figures", "save", "report")


def test_run_writes_everything(h5ad, sim_adata, tmp_path, capsys, caplog):
    # --max-cells below the 600 cells: the sweep and the figures take a subsample and say so.
    out = tmp_path / "out"
    argv = [
        "run", str(h5ad), "--batch-key", "batch", "--label-key", "cell_type",
        "--counts-layer", "counts", "--n-top-genes", "200", "--max-epochs", "5",
        "--max-cells", "400", "--out", str(out), "-v",
    ]  # fmt: skip
    with caplog.at_level(logging.INFO, logger="scetm_mnn"):
        assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "ARI" in printed and "bARI" in printed
    assert "Leiden on a stratified subsample of 400 of 600 cells" in printed
    sweep = pd.read_csv(out / "leiden_sweep.csv")
    assert {"resolution", "n_clusters", "ARI", "NMI", "bARI"} <= set(sweep.columns)
    for name in ("leiden_sweep.md", "umap.png", "topics.png", "model/model.pt", "report.html"):
        assert (out / name).stat().st_size > 0, name
    from scetm_mnn.cli import OUTPUTS

    assert all((out / name).exists() for name in OUTPUTS)  # the list --overwrite guards
    assert [p.name for p in out.rglob(".*")] == []  # no temporary of the atomic writes left
    table = (out / "leiden_sweep.md").read_text()
    assert table.startswith("Leiden on a stratified subsample of 400 of 600 cells.")
    html = " ".join((out / "report.html").read_text().split())
    assert "The sweep clustered a stratified subsample of 400 of 600 cells" in html
    assert "stratified subsample of 400 of the 600 cells" in html  # the report's own figures
    result = ad.read_h5ad(out / "input_scetm_mnn.h5ad")
    assert result.n_obs == sim_adata.n_obs  # training and the embeddings use every cell
    assert result.obsm["X_scetm_mnn"].shape == (result.n_obs, 50)
    np.testing.assert_allclose(result.obsm["X_topics"].sum(1), 1.0, rtol=1e-4)
    assert "mnn_corrected" in result.layers
    # Every phase logs its start and its end, with seconds, in order.
    messages = [r.getMessage() for r in caplog.records if r.name == "scetm_mnn._costs"]
    for phase in PHASES:
        assert f"{phase}: started" in messages, phase
        ends = [m for m in messages if re.fullmatch(rf"{phase}: [0-9.]+ s, peak RSS \d+ MiB", m)]
        assert len(ends) == 1, (phase, messages)
        assert messages.index(f"{phase}: started") < messages.index(ends[0])
    starts = [m.split(":")[0] for m in messages if m.endswith(": started")]
    assert starts == list(PHASES)
    text = caplog.text
    assert "Leiden sweep of X_scetm_mnn: 17 resolutions on a stratified subsample of 400" in text


def test_run_streams_the_backed_input_into_its_data_file(sim_adata, tmp_path, monkeypatch):
    """Counts in a backed X are not loaded: the preprocessing streams them into out/."""
    from scetm_mnn import _pipeline

    path = tmp_path / "counts_in_x.h5ad"
    sim_adata.write_h5ad(path)
    seen = {}

    def fake_preprocess(adata, **kwargs):
        seen["backed_at_call"], seen["kwargs"] = adata.isbacked, kwargs
        raise ValueError("stop here")

    real_read = ad.read_h5ad

    def read(*args, **kwargs):
        seen["backed"] = kwargs.get("backed")
        seen["input"] = real_read(*args, **kwargs)
        return seen["input"]

    monkeypatch.setattr(_pipeline.pp, "preprocess", fake_preprocess)
    monkeypatch.setattr(ad, "read_h5ad", read)
    assert main(["run", str(path), "--batch-key", "batch", "--out", str(tmp_path / "o")]) == 2
    assert seen["backed"] == "r" and seen["backed_at_call"]  # the file's dataset itself
    assert seen["kwargs"]["filename"] == tmp_path / "o" / _pipeline.DATA_FILE
    assert not seen["input"].file.is_open  # the CLI closes the file, on errors too


def test_run_rejects_a_bad_max_cells_before_training(h5ad, tmp_path, capsys):
    argv = ["run", str(h5ad), "--batch-key", "batch", "--max-cells", "1", "--out", str(tmp_path)]
    assert main(argv) == 2
    assert "max_cells must be at least 2 cells" in capsys.readouterr().err
    assert not (tmp_path / "model").exists()


def test_run_missing_batch_key(h5ad, tmp_path, capsys):
    code = main(["run", str(h5ad), "--batch-key", "donor", "--out", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    assert "donor" in err and "'batch'" in err


def test_run_rejects_non_counts(h5ad, tmp_path, capsys):
    code = main(["run", str(h5ad), "--batch-key", "batch", "--out", str(tmp_path)])
    assert code == 2
    assert "non-integer" in capsys.readouterr().err


def test_run_missing_file(tmp_path, capsys):
    code = main(["run", str(tmp_path / "nope.h5ad"), "--batch-key", "b", "--out", str(tmp_path)])
    assert code == 2
    assert "does not exist" in capsys.readouterr().err


def _subparsers():
    import argparse

    parser = build_parser()
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return parser, action.choices


@pytest.mark.parametrize("argv", [["-v", "demo"], ["demo", "-v"], ["demo", "--verbose"]])
def test_verbose_before_or_after_the_subcommand(argv):
    assert build_parser().parse_args(argv).verbose is True


def test_not_verbose_by_default():
    assert build_parser().parse_args(["demo"]).verbose is False


def test_version(capsys):
    from scetm_mnn import __version__

    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"scetm-mnn {__version__}"


def test_every_option_has_help_with_its_default_or_required():
    parser, subparsers = _subparsers()
    for name, sub in {"scetm-mnn": parser, **subparsers}.items():
        for action in sub._actions:
            if action.dest in ("help", "version", "command"):
                continue
            text = (action.help or "").lower()
            assert len(text) > 20, (name, action.dest)
            if action.option_strings and action.dest != "verbose":
                assert "default" in text or action.required, (name, action.dest)
                if action.required:
                    assert text.startswith("required"), (name, action.dest)


def test_topic_model_only_options_say_so():
    _, subparsers = _subparsers()
    for sub in subparsers.values():
        helps = {a.dest: a.help for a in sub._actions}
        assert helps["max_epochs"].startswith("topic model only")
        assert helps["mnn_weight"].startswith("topic model only")


def test_options_reach_the_pipeline(monkeypatch, h5ad, tmp_path):
    from scetm_mnn import cli

    seen = {}

    def fake_pipeline(adata, **kwargs):
        seen.update(kwargs)
        raise ValueError("stop here")

    monkeypatch.setattr(cli, "run_pipeline", fake_pipeline)
    argv = [
        "run", str(h5ad), "--batch-key", "batch", "--mnn-weight", "0.5", "--max-epochs", "3",
        "--n-top-genes", "100", "--seed", "7", "--counts-layer", "counts", "--out", str(tmp_path),
    ]  # fmt: skip
    assert main(argv) == 2
    assert seen == {
        "batch_key": "batch",
        "label_key": None,
        "counts_layer": "counts",
        "out": str(tmp_path),
        "n_top_genes": 100,
        "max_epochs": 3,
        "mnn_weight": 0.5,
        "random_state": 7,
        "report": True,
        "source_name": str(h5ad),
        "max_cells": 200_000,
        "resume": False,
        "gene_sets": None,
        "compression": None,
        "devices": 1,
        "strategy": "auto",
        "accelerator": None,
        "num_nodes": 1,
    }
    seen.clear()
    assert main([*argv, "--resume", "--gene-sets", "markers.gmt", "--compression", "lzf"]) == 2
    assert seen["resume"] is True and seen["gene_sets"] == "markers.gmt"
    assert seen["compression"] == "lzf"
    seen.clear()
    assert main([*argv, "--devices", "2", "--strategy", "ddp", "--accelerator", "cpu"]) == 2
    runtime = {k: seen[k] for k in ("devices", "strategy", "accelerator", "num_nodes")}
    assert runtime == {"devices": 2, "strategy": "ddp", "accelerator": "cpu", "num_nodes": 1}
    seen.clear()
    assert main(["demo", "--mnn-weight", "1", "--out", str(tmp_path)]) == 2
    assert seen["mnn_weight"] == 1.0 and seen["batch_key"] == "batch"
    assert seen["report"] is True and seen["source_name"].endswith("--dataset simulated")
    seen.clear()
    assert main(["run", str(h5ad), "--batch-key", "b", "--out", str(tmp_path), "--no-report"]) == 2
    assert seen["report"] is False
    seen.clear()
    assert main(["demo", "--no-report", "--out", str(tmp_path)]) == 2
    assert seen["report"] is False
    seen.clear()
    assert main(["demo", "--max-cells", "5000", "--out", str(tmp_path)]) == 2
    assert seen["max_cells"] == 5000


def test_errors_point_to_the_troubleshooting_page(tmp_path, capsys):
    from scetm_mnn.cli import TROUBLESHOOTING_URL

    main(["run", str(tmp_path / "nope.h5ad"), "--batch-key", "b", "--out", str(tmp_path)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0].startswith("scetm-mnn: error: ") and TROUBLESHOOTING_URL in lines[-1]
