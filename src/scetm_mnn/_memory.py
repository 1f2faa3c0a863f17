"""Memory before the work: the peak an in-memory run will need, and the check against it.

:func:`estimate_run` adds up what the pipeline holds at its peak (``_pipeline.run_pipeline``;
``benchmarks/results/scale.md`` for where the memory goes), from the data's shape and nnz;
:func:`check_memory` compares it with the memory available now and refuses, with
:class:`InsufficientMemoryError`, a run that would die by the kernel's OOM killer hours in.
``benchmarks/memory_estimate.py`` measures the estimate's error (docs/reliability.md).
It sits on the top floor with the pipeline it estimates, and reads the preprocessing's and
the corrector's own thresholds (the HVG sample, the dense layer, ``network="auto"``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

# The rules of the run it estimates, read from where they are decided (so they cannot drift):
from .pp._corrected import DENSE_LAYER_MAX_BYTES
from .pp._fitting import resolve_network
from .pp._hvg import HVG_MAX_CELLS

logger = logging.getLogger(__name__)

CHECK_ENV = "SCETM_MNN_CHECK_MEMORY"
"""Environment variable: ``0`` turns every memory check off (as ``check_memory=False``)."""
BASE_BYTES = 1.0 * 2**30
"""The process before the data: python, torch, scanpy, scvi-tools and lightning imported,
and the topic model's training (its minibatches, Lightning's loop)."""
HVG_COPIES = 2.0
"""Copies of the HVG sample's matrix that scanpy's seurat flavour holds (its ``expm1``)."""
PER_CELL_FLOATS = 8
"""float32 values per cell and latent dimension held after the correction: the corrected
latent and the shift in ``obsm``, the frozen latent, the reference coordinates, and the
chunks of the topic model's encoder input."""
_HEADROOM = 0.9
"""Fraction of the available memory a run may plan to use."""


@dataclass
class MemoryEstimate:
    """The estimated peak resident memory of a run (bytes), and its parts."""

    total: float
    parts: dict[str, float] = field(default_factory=dict)

    def describe(self) -> str:
        """The total and its largest parts, in GiB, for a message."""
        largest = sorted(self.parts.items(), key=lambda kv: -kv[1])[:3]
        shown = ", ".join(f"{name} {value / 2**30:.1f}" for name, value in largest)
        return f"{self.total / 2**30:.1f} GiB ({shown} GiB)"


class InsufficientMemoryError(MemoryError, ValueError):
    """A run that would need more memory than is available.

    A ``MemoryError`` and a ``ValueError``: the CLI reports it as a user error (one line,
    exit code 2).
    """


def _csr_bytes(n_obs: int, nnz: float, dtype_bytes: int, index_bytes: int) -> float:
    return nnz * (dtype_bytes + index_bytes) + 8.0 * (n_obs + 1)


def estimate_run(
    n_obs: int,
    n_vars: int,
    nnz: int | None = None,
    *,
    n_top_genes: int = 2000,
    n_comps: int = 50,
    dtype_bytes: int = 4,
    index_bytes: int = 4,
    input_in_memory: bool = True,
    streamed: bool = False,
    network: str = "auto",
    n_hidden: int = 1024,
    n_blocks: int = 2,
) -> MemoryEstimate:
    """Estimate the peak resident memory of the pipeline on data in memory.

    The preprocessing holds the input counts, their copy (``layers["counts"]``) and the
    float log-expression at once, beside scanpy's copies of the HVG sample; after it, the
    input (when the caller keeps it in memory), the two matrices of the selected genes,
    the per-cell latents, the dense corrected layer (small data) and the corrector's
    network with Adam's moments.

    Parameters
    ----------
    n_obs, n_vars, nnz
        The counts' shape and stored values (``nnz`` ``None``: dense, ``n_obs × n_vars``).
    n_top_genes
        Genes kept by the preprocessing.
    n_comps
        The corrector's latent dimensions.
    dtype_bytes, index_bytes
        Bytes per value and per column index of the counts (float32 and int32: 4 and 4).
    input_in_memory
        Whether the caller's AnnData holds the counts in memory for the whole run (not for
        ``backed="r"``, which the pipeline reads once, for the preprocessing).
    streamed
        The counts are on disk and the preprocessing streams them into the run's data
        file (the pipeline with ``out``): neither the input nor the selected genes'
        matrices are ever in memory, only the HVG sample and scanpy's copies of it.
    network, n_hidden, n_blocks
        The corrector's network (``"auto"``: residual up to 50,000 cells).

    Returns
    -------
    The estimate, with its parts (bytes).

    Examples
    --------
    >>> from scetm_mnn._memory import estimate_run
    >>> estimate = estimate_run(100_000, 2000, 70_000_000)
    >>> round(estimate.total / 2**30, 1) > 1
    True
    """
    dense_input = nnz is None
    nnz = float(n_obs) * n_vars if dense_input else float(nnz)
    counts = (
        float(n_obs) * n_vars * dtype_bytes
        if dense_input
        else _csr_bytes(n_obs, nnz, dtype_bytes, index_bytes)
    )
    log = _csr_bytes(n_obs, nnz, 4, index_bytes)  # float32, or CSR from a dense input
    genes = min(n_top_genes, n_vars)
    kept = nnz * genes / n_vars
    selected = _csr_bytes(n_obs, kept, dtype_bytes, index_bytes) + _csr_bytes(
        n_obs, kept, 4, index_bytes
    )
    sample = min(n_obs, HVG_MAX_CELLS) / max(n_obs, 1)
    hvg = HVG_COPIES * log * sample
    preprocess = counts + counts + log + hvg
    if streamed:  # a chunk at a time; the sample's log matrix and scanpy's copies of it
        input_in_memory, selected, preprocess = False, 0.0, log * sample + hvg
    if resolve_network(network, n_obs) == "residual":
        weights = 4.0 * n_blocks * genes * genes
    else:
        weights = genes * n_hidden + n_hidden * n_hidden + n_hidden * n_comps
    net = 4.0 * weights * 4  # the weights, their gradient and Adam's two moments
    dense_layer = float(n_obs) * genes * 4
    dense_layer = 2 * dense_layer if dense_layer <= DENSE_LAYER_MAX_BYTES else 0.0
    latents = 4.0 * PER_CELL_FLOATS * n_obs * n_comps
    after = (counts if input_in_memory else 0.0) + selected + latents + dense_layer + net
    parts = {"base": BASE_BYTES}
    if streamed and preprocess >= after:
        parts.update(hvg_sample=preprocess)
    elif preprocess >= after:
        parts.update(counts=2 * counts, log_expression=log, hvg_sample=hvg)
    else:
        parts.update(
            input=counts if input_in_memory else 0.0,
            selected_genes=selected,
            latents=latents,
            dense_layer=dense_layer,
            network=net,
        )
    return MemoryEstimate(total=float(sum(parts.values())), parts=parts)


def available_bytes() -> float | None:
    """Memory available to a new allocation now, in bytes.

    ``MemAvailable`` of ``/proc/meminfo`` (Linux), bounded by a cgroup's limit; ``None``
    where unknown.
    """
    available = None
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    available = float(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    if available is None:
        try:
            available = float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            return None
    for path, used in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        (
            "/sys/fs/cgroup/memory/memory.limit_in_bytes",
            "/sys/fs/cgroup/memory/memory.usage_in_bytes",
        ),
    ):
        try:
            with open(path) as limit_file, open(used) as used_file:
                limit = limit_file.read().strip()
                if limit != "max" and float(limit) < 2**60:
                    available = min(available, float(limit) - float(used_file.read()))
        except (OSError, ValueError):
            continue
    return available


def check_memory(estimate: MemoryEstimate, what: str, available: float | None = None) -> None:
    """Refuse a run whose estimated peak exceeds the memory available now.

    Parameters
    ----------
    estimate
        :func:`estimate_run`'s estimate.
    what
        The run, for the message (e.g. ``"run_pipeline"``).
    available
        Bytes available (default: :func:`available_bytes`). Nothing is checked when it is
        unknown, or when ``$SCETM_MNN_CHECK_MEMORY`` is ``0``.

    Raises
    ------
    InsufficientMemoryError
        The estimate exceeds 90 % of the available memory. The message names both, and
        the ways out: the backed path and the parameters that shrink the run.
    """
    if os.environ.get(CHECK_ENV, "1").strip() == "0":
        return
    available = available_bytes() if available is None else available
    if available is None:
        return
    logger.info(
        "%s: estimated peak memory %s; %.1f GiB available.",
        what,
        estimate.describe(),
        available / 2**30,
    )
    if estimate.total <= _HEADROOM * available:
        return
    raise InsufficientMemoryError(
        f"{what} would need about {estimate.describe()} of memory at its peak, and "
        f"{available / 2**30:.1f} GiB are available. Open the input with "
        "anndata.read_h5ad(path, backed='r') (the command line always does), so that the "
        "counts are read once, for the preprocessing, and not kept beside its copies; or "
        "run on fewer cells, fewer genes (n_top_genes / --n-top-genes) or a machine with "
        "more memory (docs/scaling.md). To run anyway, pass check_memory=False or set "
        f"${CHECK_ENV}=0."
    )
