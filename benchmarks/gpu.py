"""GPU path: training cells/s against scETM 0.5.0, the host-to-device bound, bf16 autocast.

Everything runs on the best device torch sees: CUDA when ``torch.cuda.is_available()``,
else the CPU, and then the printed header and ``--out`` say that no GPU was available
and that every figure is a CPU figure, not a GPU one. Three measurements (issue #35,
"GPU path ready"):

1. **Training cells/s.** The default :class:`~scetm_mnn.model.BatchCorrectedSCETM` (K=50
   topics, L=400 gene-embedding dimensions, encoder 128, batch bias on) and the original
   scETM 0.5.0 (``benchmarks/_scetm_runner.py`` in its own venv, ``make bench-env``;
   ``--scetm-python``) train on the same simulated counts (``--cells`` × ``--genes``, 4
   batches) on the same device, batch size 2000, for the same number of optimizer steps
   (ours goes by epochs: to within one epoch). Cells/s is the cells trained on over the
   training seconds (``throughput.train_ours`` / ``throughput.time_scetm``): all of
   ``model.train`` for ours (Lightning's setup, moving the data to the device and the
   topic pruning included), scETM's ``trainer.train``. *Steady* counts only our steps
   after the first ``--warmup``, the device synchronized at both ends.
2. **The host-to-device bound.** Minibatches of 2000 cells × 2000 genes (float32, 16 MB)
   reaching the device, no model: (a) a pageable host tensor ``.to(device)`` (on the CPU a
   memcpy into a preallocated tensor), (b) a pinned one with ``non_blocking=True`` (CUDA
   only), and the package's own paths (:class:`~scetm_mnn.train.MinibatchSource`, from
   the training data's registry): minibatches built on the host and copied (pageable;
   pinned, what ``MinibatchSource.place`` chooses when the data do not fit on the
   device), and (c) gathered from the counts already held on the device (``place``'s
   ``"device"``, ``DeviceRows`` / ``gather_csr_rows``). The bound is the faster of (a)
   and (b); our steady training cells/s is given as a fraction of every path.
3. **bf16 autocast.** The same model trained in float32 and with
   ``precision="bf16-mixed"``, ``validation_size=0.05``, each with the seeds ``--seed``,
   ``--seed + 1``, ... (``--bf16-seeds``; the same validation cells for all). Reported:
   the relative difference of the means of the held-out ELBO and reconstruction loss that
   training logs (``model.history``, computed under autocast) and of the held-out ELBO
   evaluated after training in float32 (``model.get_elbo`` on the validation cells),
   beside fp32's own range over the seeds: after a few hundred steps the KL term, whose
   weight is still near 0, moves the ELBO by more than 0.5 % from seed to seed.

Targets on a GPU (issue #35): training ≥ 50 % of the host-to-device bound and ≥ 3 ×
scETM 0.5.0's cells/s; bf16 becomes the default only if the held-out ELBO stays within
0.5 %.

Run (on a GPU: the defaults, 50,000 cells and 200 steps)::

    .venv/bin/python benchmarks/gpu.py [--cells 50000] [--steps 200] \\
        [--scetm-python .venv-scetm/bin/python] [--out benchmarks/results/gpu.md]

A CPU smoke run: ``--cells 600 --steps 3 --skip-scetm --out -``.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import math
import os
import platform
import shlex
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from _common import REPO_DIR, to_markdown
from lightning.pytorch.callbacks import Callback
from scvi import REGISTRY_KEYS
from throughput import SCETM_PYTHON, time_scetm, train_ours

from scetm_mnn.datasets import simulate
from scetm_mnn.train import epoch_order, source_from_manager

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "gpu.md"
#: Issue #35's targets on a GPU.
BOUND_TARGET = 0.5
SCETM_TARGET = 3.0
BF16_TARGET = 0.005
#: What the bf16 table compares (its relative-difference row).
BF16_METRICS = (
    "elbo_validation",
    "reconstruction_loss_validation",
    "kl_local_validation",
    "held-out ELBO (fp32 eval)",
    "held-out reconstruction (fp32 eval)",
)


def pick_device(name: str) -> torch.device:
    """``auto``: CUDA when torch sees it, else the CPU; otherwise the device named."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); nothing on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepClock(Callback):
    """Seconds and cells of the training steps after the first ``warmup`` ones.

    The clock starts at the start of step ``warmup`` and stops at the end of training, the
    device synchronized at both ends; validation passes in between are left out.
    """

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.start: float | None = None
        self.paused = 0.0
        self.seconds = 0.0
        self.cells = 0
        self._validation_start: float | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.start is None and trainer.global_step >= self.warmup:
            sync(pl_module.device)
            self.start = time.perf_counter()
        if self.start is not None:
            self.cells += int(batch[REGISTRY_KEYS.X_KEY].shape[0])

    def on_validation_start(self, trainer, pl_module) -> None:
        if self.start is not None:
            sync(pl_module.device)
            self._validation_start = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._validation_start is not None:
            sync(pl_module.device)
            self.paused += time.perf_counter() - self._validation_start
            self._validation_start = None

    def on_train_end(self, trainer, pl_module) -> None:
        if self.start is not None:
            sync(pl_module.device)
            self.seconds = time.perf_counter() - self.start - self.paused

    @property
    def cells_per_s(self) -> float:
        """Cells per second of the clocked steps (NaN when none was clocked)."""
        return self.cells / self.seconds if self.seconds > 0 else math.nan


def _accelerator(device: torch.device) -> dict:
    return {"accelerator": "gpu" if device.type == "cuda" else "cpu", "devices": 1}


def train_table(
    adata, device: torch.device, args: argparse.Namespace
) -> tuple[pd.DataFrame, dict[str, float], list[str], object]:
    """Ours against scETM 0.5.0: the table, the cells/s (``ours``, ``steady``, ``scetm``),
    notes and our trained model."""
    notes: list[str] = []
    clock = StepClock(min(args.warmup, (args.steps - 1) // 2))
    model, seconds, cells = train_ours(
        adata, args.steps, args.batch_size, callbacks=[clock], **_accelerator(device)
    )
    ours = cells / seconds
    rows = [
        {
            "method": "scetm-mnn",
            "steps": model.trainer.global_step,
            "seconds": seconds,
            "cells/s": ours,
            "steady cells/s": clock.cells_per_s,
        }
    ]
    scetm = math.nan
    if args.skip_scetm:
        notes.append("scETM 0.5.0 was not run (--skip-scetm).")
    elif not Path(args.scetm_python).exists():
        notes.append(
            f"scETM 0.5.0 was not run: no interpreter at {args.scetm_python} (build its "
            "venv with `make bench-env`, or pass --scetm-python)."
        )
    else:
        try:
            seconds, steps, cells = time_scetm(
                adata, args.steps, args.batch_size, python=args.scetm_python, device=str(device)
            )
        except subprocess.CalledProcessError as err:
            tail = " ".join((err.stderr or "").strip().splitlines()[-3:])
            notes.append(f"scETM 0.5.0 failed (exit {err.returncode}): {tail}")
        else:
            scetm = cells / seconds
            rows.append(
                {
                    "method": "scETM 0.5.0",
                    "steps": steps,
                    "seconds": seconds,
                    "cells/s": scetm,
                    "steady cells/s": math.nan,
                }
            )
    table = pd.DataFrame(rows)
    table["ours / scETM"] = [ours / scetm, math.nan][: len(rows)]
    return table, {"ours": ours, "steady": clock.cells_per_s, "scetm": scetm}, notes, model


def _minibatches(n_obs: int, batch_size: int, seed: int) -> Iterator[np.ndarray]:
    """Full minibatches of shuffled cells, epoch after epoch, as training draws them."""
    epoch = 0
    while True:
        order = epoch_order(np.arange(n_obs), seed, epoch)
        for start in range(0, order.size - batch_size + 1, batch_size):
            yield order[start : start + batch_size]
        epoch += 1


def _seconds_per_minibatch(
    fetch: Callable[[np.ndarray], torch.Tensor],
    batches: Iterator[np.ndarray],
    iters: int,
    device: torch.device,
) -> float:
    for _ in range(3):  # allocators, pinned-memory pools, CUDA's lazy kernels
        fetch(next(batches))
    sync(device)
    rows = [next(batches) for _ in range(iters)]
    start = time.perf_counter()
    for index in rows:
        fetch(index)
    sync(device)
    return (time.perf_counter() - start) / iters


def _pinned(block: torch.Tensor) -> tuple[torch.Tensor | None, str | None]:
    try:
        return block.pin_memory(), None
    except RuntimeError as err:
        return None, f"pinned memory is unavailable here ({str(err).rstrip('.')})"


def data_path_table(
    model, device: torch.device, args: argparse.Namespace
) -> tuple[pd.DataFrame, float, list[str]]:
    """Cells/s of each way minibatches reach the device; the table, the bound, notes."""
    notes: list[str] = []
    batch_size, cuda = min(args.batch_size, model.adata.n_obs), device.type == "cuda"
    host = source_from_manager(model.adata_manager)  # the training data, held as training does
    n_obs, n_genes = host.n_obs, host.x.shape[1]
    block = torch.from_numpy(host.x.take(np.arange(batch_size)))
    pinned, why = _pinned(block)
    pinned_source = source_from_manager(model.adata_manager)
    on_device = source_from_manager(model.adata_manager)
    placements = {
        "pinned": pinned_source.place(device, budget_bytes=0),
        "device": on_device.place(device, budget_bytes=2**62),
    }
    x_key = REGISTRY_KEYS.X_KEY

    buffer = torch.empty_like(block)  # the CPU's "copy to the device": a memcpy

    def copied(rows: np.ndarray) -> torch.Tensor:
        return block.to(device) if cuda else buffer.copy_(block)

    def copied_pinned(rows: np.ndarray) -> torch.Tensor:
        return pinned.to(device, non_blocking=True)

    def from_host(rows: np.ndarray) -> torch.Tensor:
        return host.tensors(rows)[x_key].to(device)

    def from_pinned(rows: np.ndarray) -> torch.Tensor:
        return pinned_source.tensors(rows)[x_key].to(device, non_blocking=True)

    def from_device(rows: np.ndarray) -> torch.Tensor:
        return on_device.tensors(rows)[x_key]

    paths: dict[str, tuple[str, Callable[[np.ndarray], torch.Tensor] | None]] = {
        "(a) pageable host tensor": (
            ".to(device)" if cuda else "a memcpy into a preallocated tensor",
            copied,
        ),
        "(b) pinned host tensor": (
            ".to(device, non_blocking=True)",
            None if pinned is None else copied_pinned,
        ),
        "MinibatchSource on the host": (
            "rows densified on the host, .to(device)" if cuda else "rows densified (CPU training)",
            from_host,
        ),
        "MinibatchSource, pinned": (
            f"place() -> {placements['pinned']!r}, .to(device, non_blocking=True)",
            from_pinned if placements["pinned"] == "pinned" else None,
        ),
        "(c) MinibatchSource on the device": (
            f"place() -> {placements['device']!r}: DeviceRows gather",
            from_device,
        ),
    }
    if why is not None:
        notes.append(f"(b) was not measured: {why}.")
    if placements["pinned"] != "pinned":
        notes.append(
            f"MinibatchSource.place serves pinned minibatches on CUDA only (here: "
            f"{placements['pinned']!r}), so its pinned path was not measured."
        )
    rows = []
    for name, (what, fetch) in paths.items():
        if fetch is None:
            rows.append({"path": name, "how": what, "ms / minibatch": math.nan})
            continue
        batches = _minibatches(n_obs, batch_size, args.seed)
        seconds = _seconds_per_minibatch(fetch, batches, args.transfer_iters, device)
        rows.append({"path": name, "how": what, "ms / minibatch": 1000 * seconds})
    table = pd.DataFrame(rows)
    table["cells/s"] = batch_size / (table["ms / minibatch"] / 1000)
    table["GB/s"] = table["cells/s"] * n_genes * 4 / 1e9
    copies = table["path"].str.startswith(("(a)", "(b)"))
    bound = float(table.loc[copies, "cells/s"].max())
    return table, bound, notes


def _train_precision(
    adata, device: torch.device, args: argparse.Namespace, precision: str, seed: int
) -> dict:
    """One training run's speed and held-out figures (``BF16_METRICS``)."""
    steps = args.bf16_steps or args.steps
    clock = StepClock(min(args.warmup, (steps - 1) // 2))
    model, seconds, cells = train_ours(
        adata, steps, args.batch_size, precision=precision, validation_size=0.05, seed=seed,
        datasplitter_kwargs={"seed": args.seed}, callbacks=[clock], **_accelerator(device),
    )  # fmt: skip
    history, held_out = model.history, model.validation_indices
    torch.manual_seed(args.seed)  # the same draws of δ for the evaluation of every run
    return {
        "steps": model.trainer.global_step,
        "cells/s": cells / seconds,
        "steady cells/s": clock.cells_per_s,
        **{k: float(history[k].dropna().iloc[-1, 0]) for k in BF16_METRICS[:3]},
        "held-out ELBO (fp32 eval)": model.get_elbo(indices=held_out),
        "held-out reconstruction (fp32 eval)": model.get_reconstruction_error(indices=held_out)[
            "reconstruction_loss"
        ],
    }


def bf16_table(
    adata, device: torch.device, args: argparse.Namespace
) -> tuple[pd.DataFrame, dict[str, float], list[str]]:
    """fp32 against bf16-mixed, each trained with the seeds ``--seed`` ... (``--bf16-seeds``).

    Every run holds out the same validation cells (the split's seed is ``--seed``); the
    seeds change the initialization, the minibatch order and the draws. Returns the table,
    the relative difference of the means of bf16 and fp32 per metric (``BF16_METRICS``,
    in %) and notes.
    """
    notes: list[str] = []
    seeds = range(args.seed, args.seed + max(1, args.bf16_seeds))
    rows = []
    for precision in ("32-true", "bf16-mixed"):
        for seed in seeds:
            row = {"run": f"{precision}, seed {seed}"}
            try:
                row |= _train_precision(adata, device, args, precision, seed)
            except Exception as err:  # a failure is a result here
                notes.append(f"precision={precision!r} failed: {type(err).__name__}: {err}")
            rows.append(row)
    columns = ["run", "steps", "cells/s", "steady cells/s", *BF16_METRICS]
    runs = pd.DataFrame(rows).reindex(columns=columns)
    fp32, bf16 = runs.iloc[: len(seeds)], runs.iloc[len(seeds) :]
    metrics = list(BF16_METRICS)
    mean32, mean16 = fp32[metrics].mean(skipna=False), bf16[metrics].mean(skipna=False)
    change = 100 * (mean16 - mean32).abs() / mean32.abs()
    summary = [
        {"run": "fp32, mean", **mean32.to_dict()},
        {"run": "bf16-mixed, mean", **mean16.to_dict()},
        {"run": "bf16 vs fp32, means (%)", **change.to_dict()},
    ]
    if len(seeds) > 1:
        spread = 100 * (fp32[metrics].max() - fp32[metrics].min()) / mean32.abs()
        summary.append({"run": "fp32 across seeds, max − min (%)", **spread.to_dict()})
    speed = bf16["steady cells/s"].mean() / fp32["steady cells/s"].mean()
    notes += [
        f"bf16's steady cells/s over fp32's: {speed:.2f} ×.",
        "The (%) rows: |bf16 − fp32| / |fp32| of the means over the seeds, and fp32's own "
        "range over the seeds, the scale of run-to-run differences. history's figures are "
        "the training objective's on the validation cells (proportions' NLL + KL, under "
        "autocast); the fp32 eval is the multinomial ELBO of their counts "
        "(model.get_elbo), with the same draws for every run.",
    ]
    table = pd.concat([runs, pd.DataFrame(summary)], ignore_index=True).reindex(columns=columns)
    table["steps"] = table["steps"].astype("Int64")
    return table, change.to_dict(), notes


def _shown(table: pd.DataFrame, digits: int) -> pd.DataFrame:
    """Floats rounded, cells/s as whole numbers with thousands separators, ``—`` if missing."""
    table = table.round(digits)
    for column in ("cells/s", "steady cells/s"):
        if column in table:
            table[column] = [None if pd.isna(v) else f"{v:,.0f}" for v in table[column]]
    return table.astype(object).where(table.notna(), "—")


def _percent(fraction: float) -> str:
    return "—" if math.isnan(fraction) else f"{100 * fraction:.1f} %"


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO_DIR), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip()


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def header(device: torch.device, args: argparse.Namespace, argv: Sequence[str]) -> str:
    """The title, the date, the machine, the command and, without a GPU, the warning."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        machine = f"GPU {name} (CUDA {torch.version.cuda})"
    else:
        machine = f"CPU {_cpu_name()}, {os.cpu_count()} cores"
    if args.machine:
        machine = f"{args.machine}; {machine}"
    command = shlex.join(["python", "benchmarks/gpu.py", *argv])
    lines = [
        "# GPU path: training cells/s, the host-to-device bound, bf16 autocast",
        "",
        f"{datetime.date.today().isoformat()}, code `{_commit()}`, torch {torch.__version__}, "
        f"torch threads: {torch.get_num_threads()}. Device: {machine}.",
        "",
        f"Command: `{command}`",
        "",
        f"Data: `simulate(n_cells={args.cells}, n_genes={args.genes}, n_batches=4)`, "
        f"batch size {args.batch_size}, the default model (K=50, L=400).",
    ]
    if device.type != "cuda":
        reason = (
            "no GPU was available (torch.cuda.is_available() is False)"
            if not torch.cuda.is_available()
            else f"the run was asked for {device} (--device)"
        )
        lines += [
            "",
            f"**Not a GPU measurement: {reason}. Every figure below is a CPU figure, not "
            "a GPU one; the GPU targets do not apply to it.**",
        ]
    return "\n".join(lines)


def _targets(device: torch.device, measured: dict[str, float]) -> pd.DataFrame:
    """Issue #35's targets against what was measured (``n/a`` off a GPU)."""
    rows = []
    for target, (value, limit, unit) in {
        "training (steady) ≥ 50 % of the host-to-device bound": (
            measured["bound"],
            BOUND_TARGET,
            "%",
        ),
        "training ≥ 3 × scETM 0.5.0's cells/s": (measured["scetm"], SCETM_TARGET, "×"),
        "bf16 held-out ELBO (history) within 0.5 % of fp32": (
            measured["elbo history"],
            BF16_TARGET,
            "%",
        ),
        "bf16 held-out ELBO (fp32 eval) within 0.5 % of fp32": (
            measured["elbo eval"],
            BF16_TARGET,
            "%",
        ),
    }.items():
        if math.isnan(value):
            shown, met = "—", "not measured"
        else:
            shown = f"{100 * value:.2f} %" if unit == "%" else f"{value:.2f} ×"
            ok = value >= limit if target.startswith("training") else value <= limit
            met = ("yes" if ok else "no") if device.type == "cuda" else "n/a (CPU)"
        rows.append({"target (on a GPU)": target, "measured": shown, "met": met})
    return pd.DataFrame(rows)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto (CUDA if any), cuda or cpu")
    parser.add_argument("--cells", type=int, default=None, help="default: 50000 (CPU: 20000)")
    parser.add_argument("--genes", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=None, help="default: 200 (CPU: 50)")
    parser.add_argument("--bf16-steps", type=int, default=None, help="default: --steps")
    parser.add_argument("--bf16-seeds", type=int, default=3, help="runs per precision")
    parser.add_argument("--batch-size", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=10, help="steps left out of 'steady'")
    parser.add_argument("--transfer-iters", type=int, default=50, help="minibatches per path")
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0: default")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scetm-python", type=Path, default=SCETM_PYTHON)
    parser.add_argument("--skip-scetm", action="store_true")
    parser.add_argument("--skip-bf16", action="store_true")
    parser.add_argument("--machine", default="", help="free text for the header")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="markdown file; '-': none")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> str:
    """Run the three measurements, print the report and write it to ``--out``; return it."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    cuda = device.type == "cuda"
    args.cells = args.cells or (50_000 if cuda else 20_000)
    args.steps = args.steps or (200 if cuda else 50)
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", module="lightning")
    top = header(device, args, argv)
    print(top, flush=True)

    adata = simulate(n_cells=args.cells, n_genes=args.genes, n_batches=4, random_state=args.seed)
    train, speeds, notes, model = train_table(adata, device, args)
    paths, bound, path_notes = data_path_table(model, device, args)
    paths["steady training / path"] = [_percent(speeds["steady"] / v) for v in paths["cells/s"]]
    del model
    if args.skip_bf16:
        bf16, change, bf16_notes = pd.DataFrame(), {}, ["bf16 was not run (--skip-bf16)."]
    else:
        bf16, change, bf16_notes = bf16_table(adata, device, args)
    measured = {
        "bound": speeds["steady"] / bound,
        "scetm": speeds["ours"] / speeds["scetm"],
        "elbo history": change.get("elbo_validation", math.nan) / 100,
        "elbo eval": change.get("held-out ELBO (fp32 eval)", math.nan) / 100,
    }
    targets = _targets(device, measured)

    def section(title: str, table: pd.DataFrame, notes: list[str], digits: int = 3) -> str:
        body = to_markdown(_shown(table, digits)) if len(table) else "(not run)"
        return "\n".join([f"## {title}", "", body, *(f"\n{n}" for n in notes)])

    report = "\n\n".join(
        [
            top,
            section("Training cells/s (same data, device and steps)", train, notes, 2),
            section(
                f"Data paths: minibatches of {min(args.batch_size, args.cells)} cells × "
                f"{args.genes} genes reaching {device} (no model)",
                paths,
                [f"The host-to-device bound ((a), (b)): {bound:,.0f} cells/s.", *path_notes],
            ),
            section("bf16-mixed against fp32 (validation_size=0.05)", bf16, bf16_notes, 3),
            section("Targets (issue #35)", targets, []),
        ]
    )
    print("\n" + report[len(top) :].lstrip("\n"))
    if args.out != "-":
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(report + "\n")
    return report


if __name__ == "__main__":
    main()
