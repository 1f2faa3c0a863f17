"""Where a pipeline run's stages run: one process, or the same N processes for both.

:func:`stage_arguments` turns the run's ``devices``, ``strategy``, ``accelerator`` and
``num_nodes`` into the arguments of :func:`~scetm_mnn.pp.mnn_correct` and of the topic
model's ``train``; :func:`add_options` gives the CLI the same four options.
"""

from __future__ import annotations

import argparse

from ._cli_errors import positive_int


def stage_arguments(
    devices: int, strategy: str, accelerator: str | None, num_nodes: int
) -> tuple[dict[str, object], dict[str, object]]:
    """The runtime arguments of ``mnn_correct`` and of ``train``: none for the defaults.

    Both stages get the same processes (``devices`` × ``num_nodes``, ``"ddp"`` for more
    than one), since the topic model trains in the processes the corrector's fit started.
    ``accelerator=None`` keeps each stage's default in one process (the corrector on the
    CPU, the topic model on Lightning's ``"auto"``) and is ``"auto"`` for both in several.

    Examples
    --------
    >>> from scetm_mnn._runtime import stage_arguments
    >>> stage_arguments(1, "auto", None, 1)
    ({}, {})
    >>> correct, train = stage_arguments(2, "auto", "cpu", 1)
    >>> correct == train == {"accelerator": "cpu", "devices": 2, "strategy": "ddp", "num_nodes": 1}
    True
    """
    if (devices, strategy, accelerator, num_nodes) == (1, "auto", None, 1):
        return {}, {}
    several = devices * num_nodes > 1
    train: dict[str, object] = {
        "accelerator": accelerator or "auto",
        "devices": devices,
        "strategy": "ddp" if several else strategy,
        "num_nodes": num_nodes,
    }
    correct = {**train, "accelerator": accelerator or ("auto" if several else "cpu")}
    return correct, train


def add_options(parser: argparse.ArgumentParser) -> None:
    """``--devices``, ``--strategy``, ``--accelerator`` and ``--num-nodes``."""
    both = "corrector and topic model"
    parser.add_argument(
        "--devices",
        type=positive_int,
        default=1,
        metavar="N",
        help=f"{both}: processes per machine (CPU cores or GPUs). Above 1, the corrector's "
        "fit starts them (Lightning re-runs this command for each; rank 0 writes every "
        "output) and the topic model trains data-parallel in the same ones "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--strategy",
        choices=("auto", "ddp"),
        default="auto",
        help=f"{both}: 'ddp' (Lightning's DistributedDataParallel; gloo on the CPU), which "
        "'auto' means with --devices or --num-nodes above 1 (default: %(default)s)",
    )
    parser.add_argument(
        "--accelerator",
        choices=("auto", "cpu", "gpu"),
        default=None,
        help=f"{both}: where they train. Default: in one process, the corrector on the CPU "
        "and the topic model on a GPU when there is one; with --devices above 1, both on "
        "'auto' (GPUs when there are, else the CPU)",
    )
    parser.add_argument(
        "--num-nodes",
        type=positive_int,
        default=1,
        metavar="N",
        help=f"{both}: machines, each running this command with --devices processes "
        "(Lightning's MASTER_ADDR, MASTER_PORT and NODE_RANK; see the user guide) "
        "(default: %(default)s)",
    )


def option_values(args: argparse.Namespace) -> dict[str, object]:
    """The four options, as :func:`~scetm_mnn._pipeline.run_pipeline`'s arguments."""
    return {
        "devices": args.devices,
        "strategy": args.strategy,
        "accelerator": args.accelerator,
        "num_nodes": args.num_nodes,
    }
