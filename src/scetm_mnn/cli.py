"""Command line: ``scetm-mnn demo`` and ``scetm-mnn run``.

Both run :func:`scetm_mnn._pipeline.run_pipeline`: preprocessing (normalize, log1p,
batch-aware HVGs), the MNN corrector (:func:`scetm_mnn.pp.mnn_correct`), the topic model
(:class:`scetm_mnn.model.BatchCorrectedSCETM` on the corrected layer), a Leiden sweep when
labels exist, the figures, the saved model and the one-page ``report.html``
(:func:`scetm_mnn.pl.report`). Each option's help says which of these
stages it affects and its default. Every output is written atomically (a killed run leaves
the old file or none); errors are reported as ``_cli_errors`` describes.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import anndata as ad

from ._atomic import atomic_path
from ._cli_errors import (
    TROUBLESHOOTING_URL,
    OneLineParser,
    check_batches,
    check_input,
    check_out,
    h5ad_error,
    is_user_error,
    non_negative_float,
    positive_int,
    report,
)
from ._disk import anndata_bytes, check_free_space
from ._distributed import is_global_zero
from ._h5ad import COMPRESSIONS, close_backed
from ._pipeline import LATENT_KEY, TOPICS_KEY, run_pipeline
from ._runtime import add_options, option_values
from .pl import FIGURE_MAX_CELLS
from .tl._leiden import sweep_subsample

DATASETS = ("simulated", "baron-mouse", "baron-human")
OUTPUTS = (
    "leiden_sweep.csv",
    "leiden_sweep.md",
    "umap.png",
    "topics.png",
    "model",
    "report.html",
    "costs.csv",
)
"""What a run writes into ``--out`` (``run`` also ``<input>_scetm_mnn.h5ad``); an ``--out``
that holds any of them is refused without ``--overwrite``. The run's data file
(``DATA_FILE``, while a run on counts read from disk goes) is not among them: it is the
run's own, which the other processes of ``--devices N`` find there when they start, and a
new run replaces it."""


def _load_demo(name: str) -> ad.AnnData:
    from . import datasets

    if name == "simulated":
        return datasets.simulate(n_cells=2000, n_genes=1000, n_batches=3, n_cell_types=6)
    species = name.split("-", 1)[1]
    # The human cells of the README's table: a seeded quarter (see datasets.baron_pancreas).
    return datasets.baron_pancreas(species, subsample=0.25 if species == "human" else None)


def _print_summary(result, out: Path) -> None:
    if result.summary is not None:
        if (note := sweep_subsample(result.sweep)) is not None:
            print(f"Leiden on a {note}:")
        print(result.sweep.round(3).to_markdown(index=False))
        print()
        print(" | ".join(f"{k}: {v:.3f}" for k, v in result.summary.items()))
    print(f"\nOutputs in {out}/:")
    for what, path in result.files.items():
        print(f"  {what:8s} {path}")


def _demo(args: argparse.Namespace) -> int:
    check_out(Path(args.out), args.overwrite, OUTPUTS)
    adata = _load_demo(args.dataset)
    result = run_pipeline(
        adata,
        batch_key="batch",
        label_key="cell_type",
        out=args.out,
        max_epochs=args.max_epochs,
        mnn_weight=args.mnn_weight,
        random_state=args.seed,
        report=not args.no_report,
        source_name=f"scetm-mnn demo --dataset {args.dataset}",
        max_cells=args.max_cells,
        **option_values(args),
    )
    if is_global_zero():  # with --devices N, rank 0 reports
        _print_summary(result, Path(args.out))
    return 0


def _run(args: argparse.Namespace) -> int:
    path, out = Path(args.input), Path(args.out)
    h5ad = out / f"{path.stem}_scetm_mnn.h5ad"
    check_input(path)
    check_out(out, args.overwrite or args.resume, (*OUTPUTS, h5ad.name))  # a resumed run owns them
    # Backed: obs, var and the layers are read now; X stays on disk. Counts in X are
    # streamed by the preprocessing into the run's data file (renamed to `h5ad` at the
    # end); counts in a layer are read into memory once.
    try:
        adata = ad.read_h5ad(path, backed="r")
    except Exception as err:  # not an h5ad, truncated: the user's file, not a crash
        raise h5ad_error(path, err) from err
    try:
        check_batches(adata.obs, args.batch_key)
        result = run_pipeline(
            adata,
            batch_key=args.batch_key,
            label_key=args.label_key,
            counts_layer=args.counts_layer,
            out=args.out,
            n_top_genes=args.n_top_genes,
            max_epochs=args.max_epochs,
            mnn_weight=args.mnn_weight,
            random_state=args.seed,
            report=not args.no_report,
            source_name=str(path),
            max_cells=args.max_cells,
            resume=args.resume,
            gene_sets=args.gene_sets,
            compression=args.compression,
            **option_values(args),
        )
    finally:
        adata.file.close()
    if not is_global_zero():  # the other processes of --devices N: rank 0 writes
        return 0
    result.files["h5ad"] = h5ad
    if result.adata.isbacked:  # the run's data file holds it all: renamed, not copied
        close_backed(result.adata)
        os.replace(result.files.pop("data"), h5ad)
    else:
        check_free_space(h5ad, anndata_bytes(result.adata), "the output h5ad")
        with atomic_path(h5ad) as temporary:
            result.adata.write_h5ad(temporary)
    _print_summary(result, out)
    print(f"Embeddings: obsm[{LATENT_KEY!r}] (cluster on it), obsm[{TOPICS_KEY!r}] (topics).")
    return 0


def _add_flags(parser: argparse.ArgumentParser, default) -> None:
    """``-v`` and ``--debug``, accepted before and after the subcommand."""
    where = "accepted before or after the subcommand"
    for flags, text in (
        (("-v", "--verbose"), f"log each stage's progress (INFO messages) to stderr; {where}"),
        (
            ("--debug",),
            f"show the Python traceback of every error; {where}. Default: user errors "
            "print one line, crashes their traceback",
        ),
    ):
        parser.add_argument(*flags, action="store_true", default=default, help=text)


def _add_out(parser: argparse.ArgumentParser, text: str, default: str | None = None) -> None:
    """``--out`` (required without a default) and ``--overwrite``."""
    parser.add_argument(
        "--out", default=default, required=default is None, metavar="DIR", help=text
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the outputs of an earlier run in --out. Default: refuse, with exit "
        "status 2, when --out already holds any of them (nothing is changed)",
    )


def build_parser() -> argparse.ArgumentParser:
    """Build the ``scetm-mnn`` argument parser, with its ``demo`` and ``run`` subcommands.

    Returns
    -------
    The parser; :func:`main` runs the subcommand it parses.

    Examples
    --------
    >>> from scetm_mnn.cli import build_parser
    >>> parser = build_parser()
    >>> args = parser.parse_args(
    ...     ["run", "data.h5ad", "--batch-key", "donor", "--out", "res", "-v"]
    ... )
    >>> args.command, args.batch_key, args.label_key, args.out, args.verbose
    ('run', 'donor', None, 'res', True)
    >>> args.n_top_genes, args.max_epochs, args.mnn_weight, args.seed
    (2000, None, None, 0)
    """
    from . import __version__

    parser = OneLineParser(
        prog="scetm-mnn",
        description="MNN batch correction + embedded topic model (scETM) for scRNA-seq. "
        "Each subcommand runs the whole pipeline: preprocess (normalize, log1p, "
        "batch-aware highly variable genes) -> MNN correction -> topic model -> Leiden "
        "sweep (with labels) -> figures, saved model and report.html.",
        epilog=f"Errors are explained at {TROUBLESHOOTING_URL}",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _add_flags(parser, default=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="{demo,run}")

    common = OneLineParser(add_help=False)
    # SUPPRESS: a -v given before the subcommand is not reset by the subcommand's default.
    _add_flags(common, default=argparse.SUPPRESS)
    common.add_argument(
        "--max-epochs",
        type=positive_int,
        default=None,
        metavar="N",
        help="topic model only: passes over the cells. Default: about 2,000 optimizer "
        "steps of 256 cells (scetm_mnn.model.default_max_epochs), which topics need; "
        "lower it only for a quick look. The corrector's budget is fixed",
    )
    common.add_argument(
        "--mnn-weight",
        type=non_negative_float,
        default=None,
        metavar="W",
        help="topic model only: weight of the MNN term in its loss. Default: the model's "
        "(0 under its default conformal encoder of the corrector's latent, which keeps the "
        "latent's distances, so the term is constant there; 1 with a hidden layer). "
        "0 turns it off",
    )
    common.add_argument(
        "--no-report",
        action="store_true",
        help="outputs only: do not write report.html, the one-page HTML summary of the run "
        "(data, UMAPs before/after, Leiden sweep, topics, training curves, cost per phase; "
        "self-contained, opens offline). Default: the report is written",
    )
    common.add_argument(
        "--max-cells",
        type=positive_int,
        default=FIGURE_MAX_CELLS,
        metavar="N",
        help="evaluation and figures only: above N cells, the Leiden sweep and umap.png "
        "use a stratified subsample of N cells (by batch x label, so rare cell types stay) "
        "and say so; report.html draws at most N (its own cap is 50,000). Training and the "
        "embeddings always use every cell (default: %(default)s)",
    )
    common.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the corrector, the topic model's training and the Leiden sweep; the "
        "figures' UMAP always uses seed 0 (default: %(default)s)",
    )
    add_options(common)

    demo = sub.add_parser(
        "demo",
        parents=[common],
        help="run the pipeline on a bundled data set",
        description="Run the whole pipeline on a bundled data set and print its Leiden sweep.",
    )
    demo.set_defaults(func=_demo)
    demo.add_argument(
        "--dataset",
        choices=DATASETS,
        default="simulated",
        help="input: 'simulated' (2,000 cells, 3 batches, 6 types; needs nothing), "
        "'baron-mouse' (1,886 cells, 2 mice) or 'baron-human' (the seeded quarter of the "
        "4 donors' 8,569 cells, 2,142 cells); the Baron data are read from $SCETM_MNN_DATA "
        "or downloaded (default: %(default)s)",
    )
    _add_out(
        demo,
        "output folder: metrics, figures, model, report.html (default: %(default)s)",
        default="demo_output",
    )

    text = "run the pipeline on your .h5ad file"
    description = "Run the whole pipeline on an .h5ad file and write the results to --out."
    run = sub.add_parser("run", parents=[common], help=text, description=description)
    run.set_defaults(func=_run)
    run.add_argument(
        "input",
        help="input .h5ad with raw integer counts in X, or in the layer named by --counts-layer",
    )
    run.add_argument(
        "--batch-key",
        required=True,
        metavar="COLUMN",
        help="required: obs column whose categories are the batches to remove (donor, "
        "sample, plate; not the condition you study). Used by every stage: batch-aware "
        "HVGs, MNN pairs between batches, the topic model's per-batch bias",
    )
    run.add_argument(
        "--label-key",
        default=None,
        metavar="COLUMN",
        help="evaluation only: obs column with cell-type labels, for the Leiden sweep "
        "(ARI/NMI against them) and the figures' colours; never used for training. "
        "Default: none (no sweep; the figures use the batches)",
    )
    run.add_argument(
        "--counts-layer",
        default=None,
        metavar="LAYER",
        help="preprocessing: layer holding the raw counts, when X holds normalized "
        "data (default: X)",
    )
    run.add_argument(
        "--n-top-genes",
        type=positive_int,
        default=2000,
        metavar="N",
        help="preprocessing: highly variable genes kept; the corrector's and topic "
        "model's size grows with it (default: %(default)s)",
    )
    _add_out(
        run,
        "required: output folder for the metrics, figures, model, report.html and "
        "<input>_scetm_mnn.h5ad (created if missing)",
    )
    run.add_argument(
        "--gene-sets",
        default=None,
        metavar="GMT",
        help="topic model: a GMT file of gene sets that guide the first topics, one per "
        "set, each named after its set; the other topics are annotated against them in "
        "the report (default: none, every topic free)",
    )
    run.add_argument(
        "--compression",
        choices=COMPRESSIONS,
        help="preprocessing: the HDF5 filter for the counts streamed from the input's X "
        "into <input>_scetm_mnn.h5ad (lzf: a third of the disk). Default: uncompressed",
    )
    run.add_argument(
        "--resume",
        action="store_true",
        help="continue a run that was killed, with the same input and options, from its "
        "last finished phase (preprocess, correct, train, latent; the corrector's and the "
        "topic model's epochs are checkpointed), kept in DIR/checkpoints/; the result is "
        "the uninterrupted run's. Default: off, a fresh run (and --resume without a kept "
        "state starts from the beginning too)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``scetm-mnn`` command.

    Parameters
    ----------
    argv
        The arguments after ``scetm-mnn`` (default: ``sys.argv[1:]``).

    Returns
    -------
    The exit status: 0 on success, 2 for an error the user can fix (a missing or unreadable
    file, ``obs`` column or layer, data that are not raw counts, one batch, an ``--out``
    that cannot be written or holds an earlier run, a bad option value, a full disk),
    printed as one line ``scetm-mnn: error: ... (see <troubleshooting page>)``. Other
    exceptions are crashes and propagate with their traceback; ``--debug`` prints the
    traceback of user errors too.

    Examples
    --------
    >>> from scetm_mnn.cli import main
    >>> main(["run", "missing.h5ad", "--batch-key", "donor", "--out", "results"])
    2
    """
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.func(args)
    except Exception as err:
        if not is_user_error(err):
            raise  # a crash: its traceback
        return report(err, args.debug)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
