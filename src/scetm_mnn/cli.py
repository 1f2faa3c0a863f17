"""Command line: ``scetm-mnn demo`` and ``scetm-mnn run``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import anndata as ad

from ._pipeline import LATENT_KEY, TOPICS_KEY, run_pipeline

DATASETS = ("simulated", "baron-mouse", "baron-human")


def _load_demo(name: str) -> ad.AnnData:
    from . import datasets

    if name == "simulated":
        return datasets.simulate(n_cells=2000, n_genes=1000, n_batches=3, n_cell_types=6)
    return datasets.baron_pancreas(name.split("-", 1)[1])


def _print_summary(result, out: Path) -> None:
    if result.summary is not None:
        print(result.sweep.round(3).to_markdown(index=False))
        print()
        print(" | ".join(f"{k}: {v:.3f}" for k, v in result.summary.items()))
    print(f"\nOutputs in {out}/:")
    for what, path in result.files.items():
        print(f"  {what:8s} {path}")


def _demo(args: argparse.Namespace) -> int:
    adata = _load_demo(args.dataset)
    result = run_pipeline(
        adata,
        batch_key="batch",
        label_key="cell_type",
        out=args.out,
        max_epochs=args.max_epochs,
        random_state=args.seed,
    )
    _print_summary(result, Path(args.out))
    return 0


def _run(args: argparse.Namespace) -> int:
    path = Path(args.input)
    if not path.exists():
        raise FileNotFoundError(f"Input file {path} does not exist.")
    adata = ad.read_h5ad(path)
    result = run_pipeline(
        adata,
        batch_key=args.batch_key,
        label_key=args.label_key,
        counts_layer=args.counts_layer,
        out=args.out,
        n_top_genes=args.n_top_genes,
        max_epochs=args.max_epochs,
        random_state=args.seed,
    )
    result.files["h5ad"] = Path(args.out) / f"{path.stem}_scetm_mnn.h5ad"
    result.adata.write_h5ad(result.files["h5ad"])
    _print_summary(result, Path(args.out))
    print(f"Embeddings: obsm[{LATENT_KEY!r}] (cluster on it), obsm[{TOPICS_KEY!r}] (topics).")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``scetm-mnn`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="scetm-mnn",
        description="MNN batch correction + embedded topic model (scETM) for scRNA-seq.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--max-epochs", type=int, default=None, help="training epochs")
    common.add_argument("--seed", type=int, default=0, help="random seed (default 0)")

    demo = sub.add_parser("demo", parents=[common], help="run the pipeline on a bundled dataset")
    demo.add_argument("--dataset", choices=DATASETS, default="simulated")
    demo.add_argument("--out", default="demo_output", help="output folder")
    demo.set_defaults(func=_demo)

    run = sub.add_parser("run", parents=[common], help="run the pipeline on your .h5ad file")
    run.add_argument("input", help="input .h5ad with raw counts")
    run.add_argument("--batch-key", required=True, help="obs column with batches")
    run.add_argument("--label-key", default=None, help="obs column with cell types")
    run.add_argument("--counts-layer", default=None, help="layer with raw counts (default X)")
    run.add_argument("--n-top-genes", type=int, default=2000)
    run.add_argument("--out", required=True, help="output folder")
    run.set_defaults(func=_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``scetm-mnn`` command."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.func(args)
    except (KeyError, ValueError, FileNotFoundError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"scetm-mnn: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
