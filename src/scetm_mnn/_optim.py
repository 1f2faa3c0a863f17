"""Adam with torch's fused step where the parameters allow it, for ``pp`` and ``train``."""

from __future__ import annotations

from collections.abc import Iterable

import torch

FUSED_DEVICES = ("cpu", "cuda")
"""Devices whose fused Adam kernel this package uses (about twice as fast a step on CPU)."""


def fused_adam(
    params: Iterable[torch.nn.Parameter],
    optimizer_cls: type[torch.optim.Optimizer] = torch.optim.Adam,
    **kwargs,
) -> torch.optim.Optimizer:
    """``optimizer_cls(params, **kwargs)`` (Adam or AdamW), fused when it can be.

    The fused step updates every parameter in one kernel. It is chosen when all parameters
    are floating point on a device of :data:`FUSED_DEVICES`; otherwise the default step
    (torch checks other devices only at the first step, too late to fall back).
    """
    params = list(params)
    fused = all(p.device.type in FUSED_DEVICES and p.is_floating_point() for p in params)
    return optimizer_cls(params, fused=fused, **kwargs)
