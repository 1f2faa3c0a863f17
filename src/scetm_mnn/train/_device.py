"""Registered matrices held on the training device, minibatches sliced and densified there.

On a GPU, copying each dense minibatch from the host costs more than the model's step. When
the registered data fit in the device's memory they are moved there once (CSR as three
tensors, dense as one) and every minibatch is gathered on the device; otherwise minibatches
are built on the host in pinned memory, so the copy runs asynchronously.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import sparse

from .._rows import Rows, ShiftedRows

DEVICE_DATA_FRACTION = 0.5
"""Fraction of the device's free memory that the registered data may take there."""


def device_bytes(rows: Rows | ShiftedRows) -> int | None:
    """Bytes that ``rows`` take as device tensors; ``None`` for data that stay on disk.

    Examples
    --------
    >>> import numpy as np
    >>> from scetm_mnn._rows import Rows
    >>> from scetm_mnn.train._device import device_bytes
    >>> device_bytes(Rows(np.zeros((10, 4))))
    160
    """
    if isinstance(rows, ShiftedRows):
        base = device_bytes(rows.rows)
        return None if base is None else base + 4 * (rows.shift.size + rows.basis_t.size)
    if rows.on_disk:
        return None
    data = rows.data
    if sparse.issparse(data):
        return int(data.data.size * 4 + data.indices.size * 8 + data.indptr.size * 8)
    return int(data.size * 4)


def device_budget(device: torch.device) -> int:
    """Bytes the registered data may take on ``device`` (``DEVICE_DATA_FRACTION``).

    Free CUDA memory times the fraction; 0 for the CPU (the data stay where they are)
    and for devices whose free memory cannot be queried.
    """
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * DEVICE_DATA_FRACTION)
    return 0


def gather_csr_rows(
    indptr: torch.Tensor,
    indices: torch.Tensor,
    values: torch.Tensor,
    rows: torch.Tensor,
    n_cols: int,
) -> torch.Tensor:
    """Dense rows ``rows`` of a CSR matrix given as tensors, computed where they live.

    Examples
    --------
    >>> import torch
    >>> from scetm_mnn.train._device import gather_csr_rows
    >>> indptr, indices = torch.tensor([0, 1, 1, 3]), torch.tensor([2, 0, 1])
    >>> gather_csr_rows(indptr, indices, torch.tensor([5.0, 6.0, 7.0]), torch.tensor([2, 0]), 3)
    tensor([[6., 7., 0.],
            [0., 0., 5.]])
    """
    starts = indptr[rows]
    lengths = indptr[rows + 1] - starts
    out = torch.zeros(rows.numel(), n_cols, dtype=values.dtype, device=values.device)
    total = int(lengths.sum())
    if total == 0:
        return out
    row_ids = torch.repeat_interleave(torch.arange(rows.numel(), device=rows.device), lengths)
    first = torch.repeat_interleave(starts - (torch.cumsum(lengths, 0) - lengths), lengths)
    positions = first + torch.arange(total, device=rows.device)
    out[row_ids, indices[positions]] = values[positions]
    return out


class DeviceRows:
    """In-memory rows (:class:`~scetm_mnn._rows.Rows` or ``ShiftedRows``) as device tensors.

    Parameters
    ----------
    rows
        Rows held in memory (not on disk).
    device
        Where to hold them.

    Examples
    --------
    >>> import numpy as np
    >>> import torch
    >>> from scipy import sparse
    >>> from scetm_mnn._rows import Rows
    >>> from scetm_mnn.train._device import DeviceRows
    >>> rows = Rows(sparse.csr_matrix(np.eye(3)))
    >>> DeviceRows(rows, torch.device("cpu")).take(torch.tensor([1]))
    tensor([[0., 1., 0.]])
    """

    def __init__(self, rows: Rows | ShiftedRows, device: torch.device):
        if device_bytes(rows) is None:
            raise ValueError("Rows read from disk cannot be held on a device; keep them on disk.")
        self.device = torch.device(device)
        self.shape = rows.shape
        self.base = DeviceRows(rows.rows, device) if isinstance(rows, ShiftedRows) else None
        if self.base is not None:
            self.shift = torch.from_numpy(rows.shift).to(device)
            self.basis_t = torch.from_numpy(rows.basis_t).to(device)
            return
        data = rows.data
        self.sparse = sparse.issparse(data)
        if self.sparse:
            self.indptr = torch.from_numpy(data.indptr.astype(np.int64)).to(device)
            self.indices = torch.from_numpy(data.indices.astype(np.int64)).to(device)
            self.values = torch.from_numpy(data.data).to(device)
        else:
            self.values = torch.from_numpy(data).to(device)

    def take(self, rows: torch.Tensor) -> torch.Tensor:
        """Dense float32 rows ``rows`` (a tensor of indices on any device), on the device."""
        rows = rows.to(self.device)
        if self.base is not None:
            return self.base.take(rows) + self.shift[rows] @ self.basis_t
        if self.sparse:
            return gather_csr_rows(self.indptr, self.indices, self.values, rows, self.shape[1])
        return self.values[rows]
