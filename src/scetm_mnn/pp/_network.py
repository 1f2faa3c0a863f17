"""The corrector networks: deepMNN's residual network (Zou et al. 2021) and a bottleneck.

:class:`SubspaceCorrector` keeps either one's change to a subspace of the genes;
:func:`build_network` makes one for fitting or loading, and :func:`correct_all` passes all
cells through it.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .._rows import Rows


def _layer(n_in: int, n_out: int) -> list[nn.Module]:
    """Linear → BatchNorm → PReLU."""
    return [nn.Linear(n_in, n_out), nn.BatchNorm1d(n_out), nn.PReLU()]


def _zero_norm(n_features: int) -> nn.BatchNorm1d:
    """A BatchNorm whose scale starts at zero: the layer's output starts at its bias, 0."""
    norm = nn.BatchNorm1d(n_features)
    nn.init.zeros_(norm.weight)
    return norm


class ResidualBlock(nn.Module):
    """``x + f(x)``, f = Linear(d, 2d) → BatchNorm → PReLU → Linear(2d, d) → BatchNorm → PReLU.

    The scale of the last BatchNorm starts at zero, so the block starts as the identity and
    training starts from the uncorrected data rather than from a random map.
    """

    def __init__(self, n_features: int, width_factor: int = 2):
        super().__init__()
        hidden = width_factor * n_features
        self.f = nn.Sequential(
            *_layer(n_features, hidden),
            nn.Linear(hidden, n_features),
            _zero_norm(n_features),
            nn.PReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block."""
        return x + self.f(x)


class ResidualCorrector(nn.Sequential):
    """``n_blocks`` :class:`ResidualBlock` in sequence; maps expression to expression."""

    def __init__(self, n_features: int, n_blocks: int = 2, width_factor: int = 2):
        if n_blocks < 1:
            raise ValueError(f"n_blocks must be at least 1, not {n_blocks}.")
        super().__init__(*(ResidualBlock(n_features, width_factor) for _ in range(n_blocks)))


class BottleneckShift(nn.Module):
    """Expression (genes) → shift in a d-dimensional subspace, through ``n_hidden`` units.

    Linear(genes, h) → BatchNorm → PReLU → Linear(h, h) → BatchNorm → PReLU → Linear(h, d)
    → BatchNorm, times ``scale``. It reads every gene, so it sees what distinguishes cells
    and batches outside the subspace, but writes only the ``d`` coordinates the loss
    compares: ``genes · h`` weights rather than the residual network's
    ``4 · n_blocks · genes²``. ``scale`` (a buffer, ones until set) puts the output in the
    units of each coordinate, e.g. its standard deviation over the cells, so that the
    optimizer's steps move every coordinate in proportion to its spread. The scale of the
    last BatchNorm starts at zero, so the shift starts at zero (the identity correction).
    """

    def __init__(self, n_genes: int, n_dims: int, n_hidden: int = 1024):
        super().__init__()
        if n_hidden < 1:
            raise ValueError(f"n_hidden must be at least 1, not {n_hidden}.")
        self.f = nn.Sequential(
            *_layer(n_genes, n_hidden),
            *_layer(n_hidden, n_hidden),
            nn.Linear(n_hidden, n_dims),
            _zero_norm(n_dims),
        )
        self.register_buffer("scale", torch.ones(n_dims))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The shift of each cell (cells × d)."""
        return self.f(x) * self.scale


class SubspaceCorrector(nn.Module):
    """``x ↦ x + C Bᵀ``: a corrector whose change is kept to the span of ``B``.

    ``B`` (``basis``, genes × d, orthonormal columns) spans the gene-space directions that
    the corrector's loss sees, e.g. the loadings of the frozen PCA in which MNN pairs are
    compared. Outside that span the loss sees nothing, so any change there would be
    unsupervised; the expression is left exactly as it was there. The shift ``C``
    (cells × d) is ``corrector(x)`` itself (a :class:`BottleneckShift`), or, with
    ``residual=True``, the projection ``(f(x) − x) B`` of an expression-to-expression
    network ``f`` (deepMNN's :class:`ResidualCorrector`).
    """

    def __init__(self, corrector: nn.Module, basis: torch.Tensor, residual: bool = False):
        super().__init__()
        self.corrector = corrector
        self.residual = bool(residual)
        self.register_buffer("basis", basis.to(torch.float32))
        # The spread restored after training (``restore_spread``); 1 and 0: none.
        self.register_buffer("spread", torch.ones(()))
        self.register_buffer("centre", torch.zeros(basis.shape[1]))

    def coordinates(self, x: torch.Tensor) -> torch.Tensor:
        """The coordinates ``x B`` of the cells ``x`` in the subspace (cells × d)."""
        return x @ self.basis

    def raw_shift(self, x: torch.Tensor) -> torch.Tensor:
        """The network's shift, before the spread is restored (what training sees)."""
        if self.residual:
            return self.coordinates(self.corrector(x) - x)
        return self.corrector(x)

    def shift(self, x: torch.Tensor) -> torch.Tensor:
        """The low-rank shift ``C`` of the cells ``x`` (cells × d).

        With a restored spread ``s`` about the centre ``m`` (``restore_spread``), the
        corrected coordinates are ``m + s (x B + C_raw − m)``: the network's alignment,
        scaled back to the spread the cells had within their batches.
        """
        raw = self.raw_shift(x)
        if bool(self.spread == 1.0) and not bool(self.centre.any()):
            return raw
        coords = self.coordinates(x)
        return self.centre + self.spread * (coords + raw - self.centre) - coords

    def restore_spread(self, spread: float, centre: torch.Tensor) -> None:
        """Scale the corrected coordinates by ``spread`` about ``centre`` from now on."""
        self.spread.fill_(float(spread))
        self.centre.copy_(torch.as_tensor(centre, dtype=torch.float32))

    def correct(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x̂, C)``: the cells ``x`` corrected within the subspace, and their shift."""
        shift = self.shift(x)
        return x + shift @ self.basis.T, shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Correct ``x`` within the subspace."""
        return self.correct(x)[0]


def build_network(
    network: str, n_genes: int, n_blocks: int, n_hidden: int, basis: torch.Tensor
) -> SubspaceCorrector:
    """The corrector network at its initialization (the identity), for fitting or loading.

    ``network`` is ``"residual"`` or ``"bottleneck"`` (resolved from ``"auto"``); the
    bottleneck's output scale is left at ones, for the caller to set or load.
    """
    if network == "residual":
        return SubspaceCorrector(
            ResidualCorrector(n_genes, n_blocks=n_blocks), basis, residual=True
        )
    return SubspaceCorrector(BottleneckShift(n_genes, basis.shape[1], n_hidden), basis)


@torch.inference_mode()
def correct_all(
    net: SubspaceCorrector,
    space: nn.Module,
    rows: Rows,
    dense: bool,
    chunk_size: int | None = None,
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """Correct every cell in one pass of chunks: ``(x̂ or None, latent of x̂, C)``.

    ``x̂ = x + C Bᵀ`` with ``C`` the network's shift (see ``scetm_mnn.pp._corrected``); the
    dense ``x̂`` is only assembled when ``dense``.
    """
    net.eval()
    corrected = np.empty(rows.shape, dtype=np.float32) if dense else None
    shift = np.empty((rows.n_obs, net.basis.shape[1]), dtype=np.float32)
    latent = None
    for start, block in rows.chunks(chunk_size, desc="correcting cells"):
        x = torch.from_numpy(block)
        out, c = net.correct(x)
        z = space(out).numpy()
        if latent is None:
            latent = np.empty((rows.n_obs, z.shape[1]), dtype=np.float32)
        stop = start + block.shape[0]
        shift[start:stop] = c.numpy()
        latent[start:stop] = z
        if corrected is not None:
            corrected[start:stop] = out.numpy()
        del block, x, out  # before the next chunk is read
    return corrected, latent, shift
