"""Progress bars for the passes over every cell, shown where a pass takes a while.

A pass over at least :data:`PROGRESS_MIN_CELLS` cells (the preprocessing's reads, the
corrector's PCA and its correction of every cell, encoding) shows a ``tqdm`` bar with its
rate and ETA, counted in cells; smaller passes, which take seconds, show none.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

PROGRESS_MIN_CELLS = 200_000
"""Passes over at least this many cells show a progress bar."""


class _Silent:
    """The bar of a short pass: counts nothing, shows nothing."""

    def update(self, n: int) -> None:
        """Ignore ``n`` cells done."""


@contextmanager
def cell_progress(n_cells: int, desc: str | None) -> Iterator[object]:
    """A bar of ``n_cells`` cells named ``desc`` (``update(n)`` per chunk), or a silent one.

    Silent when ``desc`` is ``None`` or the pass is shorter than ``PROGRESS_MIN_CELLS``.
    """
    if desc is None or n_cells < PROGRESS_MIN_CELLS:
        yield _Silent()
        return
    from tqdm.auto import tqdm

    bar = tqdm(total=n_cells, desc=desc, unit=" cells", unit_scale=True, smoothing=0.1)
    try:
        yield bar
    finally:
        bar.close()
