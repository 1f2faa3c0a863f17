"""Running a test worker script on 2 CPU ranks, shared by the DDP test modules."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
"""One thread per rank, as each has; warnings off, so failures show the error."""


def run_two_ranks(worker: Path, out: Path) -> list[dict]:
    """Run ``worker OUT 2`` (it starts rank 1 itself); each rank's ``rank{r}.npz`` arrays."""
    done = subprocess.run(
        [sys.executable, str(worker), str(out), "2"],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return [dict(np.load(out / f"rank{rank}.npz")) for rank in (0, 1)]
