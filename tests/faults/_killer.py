"""SIGKILL a child ``scetm-mnn run`` during a chosen phase, resume it, check what is left.

The child logs each phase's start (``<phase>: started``, ``scetm_mnn._costs``) and, once
the outputs are written, ``Wrote ...``; :func:`run_cli` reads its stderr and kills it a
chosen delay after the chosen phase starts (``"h5ad"``: after ``Wrote``, while the command
writes its h5ad). :func:`unloadable` opens every file left in the output folder,
:func:`same_result` compares a finished run's outputs with the uninterrupted run's.
``python tests/faults/_killer.py --kills 50`` runs the full suite (``make faults``) and
writes its table into ``docs/reliability.md``.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

PHASES = ("preprocess", "correct", "train", "latent", "evaluate", "figures", "save", "report")
KILL_POINTS = (*PHASES, "h5ad")
ROOT = Path(__file__).resolve().parents[2]
TOLERANCE = 1e-6


def child_env() -> dict[str, str]:
    """One thread everywhere (a seed's numbers depend on it) and a checkpoint per epoch."""
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        OPENBLAS_NUM_THREADS="1",
        NUMBA_NUM_THREADS="1",
        SCETM_MNN_CHECKPOINT_INTERVAL="0",
        PYTHONPATH=os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")]),
    )
    return env


def write_input(path: Path, n_cells: int = 200, n_genes: int = 60) -> Path:
    """Tiny simulated counts for the child runs."""
    from scetm_mnn.datasets import simulate

    simulate(
        n_cells=n_cells, n_genes=n_genes, n_batches=2, n_cell_types=3, random_state=0
    ).write_h5ad(path)
    return path


def cli_args(source: Path, out: Path, resume: bool = False, full: bool = True) -> list[str]:
    """The child's command line: the whole pipeline on tiny data, a short training;
    ``full=False``: without labels (no Leiden sweep) and without the report."""
    args = [sys.executable, "-m", "scetm_mnn.cli", "run", str(source), "-v"]
    args += ["--batch-key", "batch", "--out", str(out)]
    args += ["--label-key", "cell_type"] if full else ["--no-report"]
    args += ["--n-top-genes", "60", "--max-epochs", "6"]
    return [*args, "--resume"] if resume else args


def run_cli(args: list[str], kill_at: str | None = None, delay: float = 0.0) -> dict:
    """Run the child; kill it ``delay`` seconds after ``kill_at`` starts (``None``: never).

    Returns ``returncode``, ``killed`` (whether the kill came before the child ended),
    ``starts`` (seconds from launch at which each phase started) and ``stderr``.
    stderr is read by a thread, so the child never blocks on a full pipe while it waits.
    """
    marker = "Wrote " if kill_at == "h5ad" else f"{kill_at}: started"
    proc = subprocess.Popen(
        args, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=child_env()
    )
    launched, starts, lines = time.monotonic(), {}, []
    reached = threading.Event()

    def read() -> None:
        for line in proc.stderr:
            lines.append(line)
            for phase in PHASES:
                if f"_costs: {phase}: started" in line:
                    starts[phase] = time.monotonic() - launched
            if kill_at is not None and marker in line:
                reached.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    killed = False
    if kill_at is not None:
        while proc.poll() is None and not reached.wait(0.05):
            pass
        if reached.is_set():
            time.sleep(delay)
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                killed = True
    code = proc.wait()
    reader.join()
    return {"returncode": code, "killed": killed, "starts": starts, "stderr": "".join(lines)}


def _loads(path: Path) -> None:
    name = path.name
    if name.endswith(".h5ad"):
        import anndata as ad

        ad.read_h5ad(path)
    elif name == "model.pt":
        from scetm_mnn.model._serialization import read_model_file

        read_model_file(path)
    elif name.endswith((".pt", ".ckpt")):
        import torch

        torch.load(path, map_location="cpu", weights_only=not name.startswith("topic_model"))
    elif name.endswith(".json"):
        json.loads(path.read_text())
    elif name.endswith(".csv"):
        import pandas as pd

        pd.read_csv(path)
    elif name.endswith(".npz"):
        with np.load(path, allow_pickle=False) as saved:
            [saved[k] for k in saved.files]
    elif name.endswith(".png"):
        from PIL import Image

        with Image.open(path) as image:
            image.load()
    elif name.endswith(".html"):
        if not path.read_text().rstrip().endswith("</html>"):
            raise ValueError("truncated html")
    elif name.endswith(".md"):
        path.read_text()


def unloadable(out: Path) -> list[str]:
    """The files under ``out`` that do not load (temporary siblings, named ``.*``, aside)."""
    bad = []
    for path in sorted(out.rglob("*")):
        if path.is_file() and not any(
            part.startswith(".") for part in path.relative_to(out).parts
        ):
            try:
                _loads(path)
            except Exception as err:  # any failure to load counts
                bad.append(f"{path.relative_to(out)}: {type(err).__name__}")
    return bad


def _arrays(out: Path) -> dict[str, np.ndarray]:
    import anndata as ad
    import pandas as pd

    adata = ad.read_h5ad(next(out.glob("*_scetm_mnn.h5ad")))
    arrays = {f"obsm/{k}": np.asarray(v) for k, v in adata.obsm.items()}
    arrays.update({f"layers/{k}": np.asarray(v.todense() if hasattr(v, "todense") else v)
                   for k, v in adata.layers.items()})  # fmt: skip
    arrays["X"] = adata.X.toarray() if hasattr(adata.X, "toarray") else np.asarray(adata.X)
    arrays.update({f"obsp/{k}": v.toarray() for k, v in adata.obsp.items()})
    if (out / "leiden_sweep.csv").exists():
        sweep = pd.read_csv(out / "leiden_sweep.csv").select_dtypes("number")
        arrays["leiden_sweep"] = sweep.to_numpy(dtype=float)
    return arrays


def same_result(out: Path, reference: Path) -> list[str]:
    """The outputs of ``out`` that differ from ``reference``'s by more than 1e-6."""
    ours, theirs = _arrays(out), _arrays(reference)
    if set(ours) != set(theirs):
        return [f"keys differ: {sorted(set(ours) ^ set(theirs))}"]
    return [
        key
        for key in theirs
        if ours[key].shape != theirs[key].shape
        or not np.allclose(ours[key], theirs[key], atol=TOLERANCE, rtol=0, equal_nan=True)
    ]


def chain(source: Path, out: Path, reference: Path, durations: dict, rng, n_kills: int) -> dict:
    """Kill one run ``n_kills`` times at random points (later phases each time, mostly),
    resuming after each kill, then let it finish; count what the kills left."""
    record = {"kills": {}, "unloadable_after_kill": [], "resumes": 0}
    points = sorted(rng.sample(KILL_POINTS, n_kills), key=KILL_POINTS.index)
    first = True
    for point in points:
        delay = rng.uniform(0.0, durations.get(point, 1.0))
        run = run_cli(cli_args(source, out, resume=not first), kill_at=point, delay=delay)
        first = False
        if run["killed"]:
            record["kills"][point] = record["kills"].get(point, 0) + 1
            record["unloadable_after_kill"] += unloadable(out)
        elif run["returncode"] != 0:
            raise RuntimeError(f"the child failed at {point}:\n{run['stderr'][-3000:]}")
    final = run_cli(cli_args(source, out, resume=not first))
    record["resumes"] = len(points)
    record["finished"] = final["returncode"] == 0
    record["stderr"] = final["stderr"][-3000:] if final["returncode"] else ""
    record["unloadable"] = unloadable(out)
    record["different"] = same_result(out, reference) if record["finished"] else ["failed"]
    return record


def phase_durations(starts: dict[str, float], total: float) -> dict[str, float]:
    """Each kill point's duration in the uninterrupted run, from its phase starts."""
    ordered = sorted(starts.items(), key=lambda kv: kv[1])
    ends = [t for _, t in ordered[1:]] + [total]
    durations = {phase: max(end - start, 0.05) for (phase, start), end in zip(ordered, ends)}
    durations["h5ad"] = 0.5
    return durations


def main(argv: list[str] | None = None) -> None:
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(description="The full kill suite (make faults).")
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--per-run", type=int, default=4, help="kills per resumed run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--doc", type=Path, default=ROOT / "docs" / "reliability.md")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        source = write_input(tmp / "input.h5ad")
        reference = tmp / "reference"
        tic = time.monotonic()
        whole = run_cli(cli_args(source, reference))
        assert whole["returncode"] == 0, whole["stderr"]
        durations = phase_durations(whole["starts"], time.monotonic() - tic)
        records, kills = [], 0
        while kills < args.kills:
            out = tmp / f"run{len(records)}"
            records.append(chain(source, out, reference, durations, rng, args.per_run))
            kills += sum(records[-1]["kills"].values())
            print(json.dumps({k: v for k, v in records[-1].items() if k != "stderr"}), flush=True)
    _write_table(records, args.doc)


def _write_table(records: list[dict], doc: Path) -> None:
    per_point = {point: 0 for point in KILL_POINTS}
    for record in records:
        for point, n in record["kills"].items():
            per_point[point] += n
    finished = [r for r in records if r["finished"]]
    equal = sum(not r["different"] for r in finished)
    rows = [f"| {point} | {n} |" for point, n in per_point.items()]
    left = sum(len(r["unloadable_after_kill"]) for r in records)
    table = "\n".join(
        [
            "| killed during | kills |",
            "| --- | ---: |",
            *rows,
            f"| **all** | **{sum(per_point.values())}** |",
            "",
            f"- resumed runs: {len(records)} ({sum(r['resumes'] for r in records)} resumes), "
            f"{len(finished)} finished, **{equal} equal** to the uninterrupted run (1e-6)",
            f"- unloadable files after the final resume: "
            f"**{sum(len(r['unloadable']) for r in records)}**",
            f"- silently wrong results (finished, not equal): **{len(finished) - equal}**",
            f"- files that did not load right after a kill (before resuming): {left}",
        ]
    )
    start, end = "<!-- kill-table start -->", "<!-- kill-table end -->"
    text = doc.read_text()
    if start in text:
        text = (
            text[: text.index(start) + len(start)] + "\n" + table + "\n" + text[text.index(end) :]
        )
    else:
        text += f"\n{start}\n{table}\n{end}\n"
    doc.write_text(text)
    print(table)


if __name__ == "__main__":
    main()
