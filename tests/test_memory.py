"""The memory check before a run: the estimate grows with the data, and a run that cannot
fit is refused with the way out, before any work."""

from __future__ import annotations

import pytest

from scetm_mnn import _memory
from scetm_mnn._memory import InsufficientMemoryError, check_memory, estimate_run
from scetm_mnn._pipeline import run_pipeline
from scetm_mnn.datasets import simulate


def test_the_estimate_grows_with_the_cells_and_counts_the_kept_input():
    small, large = estimate_run(10_000, 2000, 7_000_000), estimate_run(1_000_000, 2000, 7e8)
    assert 0 < small.total < large.total
    assert small.total == pytest.approx(sum(small.parts.values()))
    backed = estimate_run(1_000_000, 2000, 7e8, input_in_memory=False)
    assert backed.total <= large.total
    # Streamed from disk, no matrix of the counts is ever held: beyond the HVG sample only
    # the per-cell latents grow with the cells (5M cells x 650 counts: < 12 GiB).
    streamed = [estimate_run(n, 2000, 650 * n, streamed=True).total for n in (10**6, 5 * 10**6)]
    assert streamed[0] < backed.total / 2 and streamed[1] < 12 * 2**30
    assert streamed[1] - streamed[0] < estimate_run(4 * 10**6, 2000, 0).parts["latents"] * 1.01


def test_a_run_that_does_not_fit_is_refused_with_the_way_out(monkeypatch):
    monkeypatch.delenv(_memory.CHECK_ENV, raising=False)
    estimate = estimate_run(1_000_000, 2000, 7e8)
    with pytest.raises(InsufficientMemoryError) as refused:
        check_memory(estimate, "This run", available=estimate.total / 2)
    message = str(refused.value)
    assert "This run would need about" in message
    assert "backed='r'" in message and "check_memory=False" in message
    assert isinstance(refused.value, ValueError)  # the CLI's user error: one line, exit 2
    check_memory(estimate, "This run", available=2 * estimate.total)  # fits: no error
    monkeypatch.setenv(_memory.CHECK_ENV, "0")
    check_memory(estimate, "This run", available=1.0)  # turned off


def test_the_pipeline_checks_before_it_preprocesses(monkeypatch):
    adata = simulate(n_cells=200, n_genes=60, random_state=0)
    monkeypatch.delenv(_memory.CHECK_ENV, raising=False)
    monkeypatch.setattr(_memory, "available_bytes", lambda: 1.0)
    with pytest.raises(InsufficientMemoryError):
        run_pipeline(adata, "batch", n_top_genes=50, max_epochs=1)
    assert "counts" not in adata.layers and "X_scetm_mnn" not in adata.obsm  # no work done
