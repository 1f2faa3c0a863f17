"""The memory estimate of an in-memory run against the measured peak, per size.

For each size (cells × 2000 genes, 4 batches, 8 types, ``scetm_mnn.datasets.simulate`` with
seed 0), one subprocess simulates the counts and writes them to an h5ad in ``--cache``
(once; later runs reuse the file), and a FRESH subprocess reads that file into memory and
runs the pipeline (``run_pipeline``: preprocess → corrector → topic model → latent; no
``out``, so no figures or report, which work on subsamples of at most 200,000 cells) with
its memory check off. It reports its peak resident memory (``ru_maxrss``) and the data's
shape and nnz; the parent computes ``scetm_mnn._memory.estimate_run`` from them, so a
change of the estimate is re-tabulated from the saved measurements (``--from-json``)
without measuring again.

Run: ``.venv/bin/python benchmarks/memory_estimate.py [--sizes 10000 100000 1000000]
[--cache /tmp/scetm_mnn_memory] [--out benchmarks/results/memory_estimate.md]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
from pathlib import Path

GENES, BATCHES, TYPES = 2000, 4, 8
MARK = "measured: "


def _simulate(n_cells: int, path: Path) -> None:
    import scetm_mnn as sm

    adata = sm.datasets.simulate(
        n_cells=n_cells, n_genes=GENES, n_batches=BATCHES, n_cell_types=TYPES, random_state=0
    )
    tmp = path.with_suffix(".tmp.h5ad")
    adata.write_h5ad(tmp)
    os.replace(tmp, path)


def _measure(path: Path) -> dict:
    """Read ``path`` into memory and run the pipeline; the peak RSS and the data's size."""
    import anndata as ad
    import torch

    torch.set_num_threads(1)
    from scetm_mnn._pipeline import run_pipeline

    adata = ad.read_h5ad(path)
    row = {
        "cells": int(adata.n_obs),
        "n_vars": int(adata.n_vars),
        "nnz": int(adata.X.nnz),
        "dtype_bytes": int(adata.X.dtype.itemsize),
        "index_bytes": int(adata.X.indices.dtype.itemsize),
        "read GiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }
    result = run_pipeline(adata, "batch", n_top_genes=GENES, check_memory=False)
    row["peak GiB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    row["phases GiB"] = {
        r.phase: round(r.peak_rss_mib / 1024, 3) for r in result.costs.itertuples()
    }
    return row


def _table(rows: list[dict]) -> str:
    from tabulate import tabulate

    from scetm_mnn._memory import estimate_run

    lines = []
    for row in rows:
        estimate = estimate_run(
            row["cells"],
            row["n_vars"],
            row["nnz"],
            n_top_genes=GENES,
            dtype_bytes=row["dtype_bytes"],
            index_bytes=row["index_bytes"],
        )
        measured = row["peak GiB"]
        lines.append(
            {
                "cells": row["cells"],
                "genes": row["n_vars"],
                "nnz": row["nnz"],
                "estimate GiB": round(estimate.total / 2**30, 2),
                "measured peak GiB": round(measured, 2),
                "error %": round(100 * (estimate.total / 2**30 - measured) / measured, 1),
                "input read GiB": round(row["read GiB"], 2),
            }
        )
    # tabulate on the dicts: a DataFrame's rows would turn the counts into floats (1e+06)
    return tabulate(lines, headers="keys", tablefmt="pipe")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--cache", type=Path, default=Path("/tmp/scetm_mnn_memory"))
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "memory_estimate.md"
    )
    parser.add_argument("--from-json", type=Path, help="re-tabulate saved measurements")
    parser.add_argument("--simulate", type=int, help=argparse.SUPPRESS)  # worker
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # worker
    args = parser.parse_args(argv)
    if args.simulate is not None:
        _simulate(args.simulate, args.cache / f"sim_{args.simulate}.h5ad")
        return
    if args.measure is not None:
        print(MARK + json.dumps(_measure(args.measure)), flush=True)
        return
    saved = args.out.with_suffix(".json")
    if args.from_json:
        rows = json.loads(args.from_json.read_text())
    else:
        rows = json.loads(saved.read_text()) if saved.exists() else []
        args.cache.mkdir(parents=True, exist_ok=True)
        for size in args.sizes:
            path = args.cache / f"sim_{size}.h5ad"
            if not path.exists():
                print(f"simulating {size:,} cells ...", file=sys.stderr, flush=True)
                subprocess.run(
                    [sys.executable, __file__, "--simulate", str(size), "--cache", args.cache],
                    check=True,
                )
            print(f"measuring {size:,} cells ...", file=sys.stderr, flush=True)
            done = subprocess.run(
                [sys.executable, __file__, "--measure", str(path)],
                capture_output=True,
                text=True,
            )
            marked = [ln for ln in done.stdout.splitlines() if ln.startswith(MARK)]
            if done.returncode != 0 or not marked:
                print(done.stderr[-3000:], file=sys.stderr)
                break
            rows = [r for r in rows if r["cells"] != size]
            rows.append(json.loads(marked[-1][len(MARK) :]))
            rows.sort(key=lambda r: r["cells"])
            saved.write_text(json.dumps(rows, indent=1))
    header = (
        "# Memory estimate against the measured peak\n\n"
        "Made by `benchmarks/memory_estimate.py` (see its docstring). Simulated counts, "
        f"{GENES} genes, {BATCHES} batches, {TYPES} types, seed 0, read into memory from an "
        "h5ad; the in-memory pipeline in a fresh process per size (1 torch thread; "
        f"{os.cpu_count()} CPU cores, {platform.machine()}). The estimate is "
        "`scetm_mnn._memory.estimate_run(n_obs, n_vars, nnz)`; the error is "
        "(estimate − measured) / measured.\n\n"
    )
    text = header + _table(rows) + "\n"
    print(text)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
