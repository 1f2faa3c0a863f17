"""A conformal linear map: a scaled isometry, so that distances keep their ratios."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import orthogonal


class ConformalLinear(nn.Module):
    """``y = s · Q x + b`` with ``Q`` (out × in) orthonormal and a learnt scale ``s > 0``.

    With ``out ≥ in`` the columns of ``Q`` are orthonormal, so ``‖y_i − y_j‖ = s ‖x_i −
    x_j‖`` for every pair of cells: the map keeps every nearest-neighbour ranking of its
    input, and a kNN graph built on ``y`` is the one built on ``x``. The topic model's
    encoder uses it to carry the corrector's latent into ``δ`` without reshaping it; the
    rotation and the scale are what it learns.

    Parameters
    ----------
    n_input
        Input dimension.
    n_output
        Output dimension; at least ``n_input``, or the map cannot keep distances.

    Examples
    --------
    >>> import torch
    >>> from scetm_mnn.module import ConformalLinear
    >>> layer = ConformalLinear(3, 5)
    >>> x = torch.randn(4, 3)
    >>> ratio = torch.pdist(layer(x)) / torch.pdist(x)
    >>> bool(torch.allclose(ratio, ratio[0]))
    True
    """

    def __init__(self, n_input: int, n_output: int):
        super().__init__()
        if n_output < n_input:
            raise ValueError(
                f"A conformal map from {n_input} to {n_output} dimensions cannot keep "
                f"distances; use at least {n_input} topics, or a non-conformal encoder."
            )
        self.linear = orthogonal(nn.Linear(n_input, n_output))
        self.log_scale = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``x`` (… × in) to ``s · Q x + b`` (… × out)."""
        linear = self.linear
        return self.log_scale.exp() * (x @ linear.weight.T) + linear.bias
