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
    for name in ("leiden_sweep.md", "umap.png", "topics.png", "model/model.pt"):
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
