"""benchmarks/gpu.py on the CPU: a tiny run finishes in seconds and says it is no GPU run."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def gpu_bench():
    """The benchmark script as a module (it imports its siblings by name)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(BENCH_DIR))
        import gpu

    return gpu


def test_cpu_smoke_run_writes_tables_that_say_no_gpu(gpu_bench, tmp_path):
    out = tmp_path / "gpu.md"
    argv = "--device cpu --cells 600 --steps 3 --threads 1 --bf16-seeds 2 --transfer-iters 3"
    argv = [*argv.split(), "--scetm-python", str(tmp_path / "none"), "--out", str(out)]
    start = time.perf_counter()
    report = gpu_bench.main(argv)
    assert time.perf_counter() - start < 30
    text = out.read_text()
    assert text == report + "\n"
    assert "Not a GPU measurement" in text and "Every figure below is a CPU figure" in text
    # A missing scETM venv is a note, not a crash.
    assert f"scETM 0.5.0 was not run: no interpreter at {tmp_path / 'none'}" in text
    for heading in ("## Training cells/s", "## Data paths", "## bf16-mixed", "## Targets"):
        assert heading in text
    assert "(c) MinibatchSource on the device" in text
    assert "| bf16 vs fp32, means (%)" in text  # both precisions trained and compared
    assert "n/a (CPU)" in text and "| yes" not in text and "| no " not in text
