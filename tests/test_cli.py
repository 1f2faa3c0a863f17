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


def test_run_writes_everything(h5ad, tmp_path, capsys):
    out = tmp_path / "out"
    argv = [
        "run", str(h5ad), "--batch-key", "batch", "--label-key", "cell_type",
        "--counts-layer", "counts", "--n-top-genes", "200", "--max-epochs", "5",
        "--out", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "ARI" in printed and "bARI" in printed
    sweep = pd.read_csv(out / "leiden_sweep.csv")
    assert {"resolution", "n_clusters", "ARI", "NMI", "bARI"} <= set(sweep.columns)
    for name in ("leiden_sweep.md", "umap.png", "topics.png", "model/model.pt", "report.html"):
        assert (out / name).stat().st_size > 0, name
    result = ad.read_h5ad(out / "input_scetm_mnn.h5ad")
    assert result.obsm["X_scetm_mnn"].shape == (result.n_obs, 50)
    np.testing.assert_allclose(result.obsm["X_topics"].sum(1), 1.0, rtol=1e-4)
    assert "mnn_corrected" in result.layers


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
    }
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


def test_errors_point_to_the_troubleshooting_page(tmp_path, capsys):
    from scetm_mnn.cli import TROUBLESHOOTING_URL

    main(["run", str(tmp_path / "nope.h5ad"), "--batch-key", "b", "--out", str(tmp_path)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0].startswith("scetm-mnn: error: ") and TROUBLESHOOTING_URL in lines[-1]
