"""What a run costs: seconds and peak memory per phase."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pandas as pd

logger = logging.getLogger(__name__)

COST_COLUMNS = ("phase", "seconds", "peak_rss_mib")


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, in MiB (NaN where it is unknown)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return float("nan")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


class PhaseCosts:
    """Collects one row per phase: its wall time and the peak RSS at its end."""

    def __init__(self) -> None:
        self.rows: list[dict[str, object]] = []

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the block as phase ``name``; its start and its end are logged."""
        self.start(name)
        tic = time.perf_counter()
        yield
        self.add(name, time.perf_counter() - tic)

    def start(self, name: str) -> None:
        """Log that phase ``name`` starts (:meth:`add` logs its end)."""
        logger.info("%s: started", name)

    def add(self, name: str, seconds: float) -> None:
        """Record a phase that took ``seconds``, with the peak RSS now."""
        row = {"phase": name, "seconds": float(seconds), "peak_rss_mib": peak_rss_mib()}
        self.rows.append(row)
        logger.info("%s: %.1f s, peak RSS %.0f MiB", name, row["seconds"], row["peak_rss_mib"])

    def frame(self) -> pd.DataFrame:
        """The rows as a DataFrame with :data:`COST_COLUMNS`."""
        return pd.DataFrame(self.rows, columns=list(COST_COLUMNS))
