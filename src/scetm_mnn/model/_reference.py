"""The reference of a query model: read from a model or a saved folder, copied, frozen.

:meth:`~scetm_mnn.model.QueryMixin.load_query_data` (:mod:`._query`) reads the reference's
registry, parameters and weights (:func:`reference_parts`), copies the weights into the
query model with new rows of ``λ`` for its new batches (:func:`load_reference_state`), and
freezes all but those rows (:func:`freeze_reference`).
"""

from __future__ import annotations

import os
from copy import deepcopy

import numpy as np
import pandas as pd
import torch
from scvi import REGISTRY_KEYS
from scvi.model.base import BaseModelClass

from ._serialization import model_path, read_model_file


def _registered_genes(registry: dict) -> pd.Index:
    """The genes a model was registered with, in its order."""
    state = registry["field_registries"][REGISTRY_KEYS.X_KEY]["state_registry"]
    return pd.Index(np.asarray(state["column_names"]).astype(str))


def reference_parts(reference, prefix: str | None = None) -> dict:
    """Registry, init parameters, genes and weights of a model or of a saved model folder."""
    if isinstance(reference, str | os.PathLike):
        saved = read_model_file(model_path(reference, prefix))
        attrs = saved["attr_dict"]
        return {
            "registry": attrs["registry_"],
            "init_params": attrs["init_params_"],
            "var_names": _registered_genes(attrs["registry_"]),
            "state": {
                k: v for k, v in saved["model_state_dict"].items() if k != "pyro_param_store"
            },
            "trained": bool(attrs.get("is_trained_", True)),
            "topic_map": attrs.get("topic_map_"),
            "topic_usage": attrs.get("topic_usage_"),
        }
    if not isinstance(reference, BaseModelClass):
        raise TypeError(
            "reference must be a trained BatchCorrectedSCETM or the folder it was saved "
            f"to with model.save(dir_path), not {type(reference).__name__}."
        )
    return {
        "registry": deepcopy(reference.registry_),
        "init_params": deepcopy(reference.init_params_),
        "var_names": _registered_genes(reference.registry_),
        "state": {k: v.detach().cpu().clone() for k, v in reference.module.state_dict().items()},
        "trained": bool(reference.is_trained_),
        "topic_map": deepcopy(getattr(reference, "topic_map_", None)),
        "topic_usage": deepcopy(getattr(reference, "topic_usage_", None)),
    }


def load_reference_state(model, state: dict[str, torch.Tensor]) -> int:
    """Copy the reference weights into ``model``; new ``λ`` rows start at their mean.

    Returns the number of reference batches (rows of the reference's ``λ``).
    """
    own = model.module.state_dict()
    state = dict(state)
    n_reference = int(state["batch_bias"].shape[0]) if "batch_bias" in state else 0
    for key, value in state.items():
        target = own[key]
        if value.shape == target.shape:
            continue
        if key != "batch_bias" or value.shape[1:] != target.shape[1:]:
            raise ValueError(
                f"The reference's {key} has shape {tuple(value.shape)}, the query "
                f"model's {tuple(target.shape)}: the two models differ."
            )
        extra = value.mean(dim=0, keepdim=True).expand(target.shape[0] - n_reference, -1)
        state[key] = torch.cat([value, extra], dim=0)
    model.module.load_state_dict(state)
    return n_reference


def freeze_reference(module: torch.nn.Module, n_reference_batches: int) -> None:
    """Freeze a module's reference weights; only the new rows of ``λ`` keep training.

    Every parameter but ``batch_bias`` gets ``requires_grad=False`` (so the optimizer
    skips it), BatchNorm layers stop updating their running statistics (``momentum=0``,
    as scvi-tools' ``freeze_batchnorm_encoder``), and a gradient hook zeroes the gradient
    of ``batch_bias``'s first ``n_reference_batches`` rows. With no new rows (or no
    ``λ``), nothing trains. Adam's weight decay would still shrink frozen rows; the
    training plan's default is 0.

    Examples
    --------
    >>> import torch
    >>> from scetm_mnn.model import freeze_reference
    >>> from scetm_mnn.module import ETMModule
    >>> module = ETMModule(n_input=6, n_batch=3, n_topics=2, n_emb=4, batch_bias=True)
    >>> freeze_reference(module, n_reference_batches=2)
    >>> module.batch_bias.sum().backward()
    >>> module.batch_bias.grad[:, 0].tolist(), module.rho.requires_grad
    ([0.0, 0.0, 1.0], False)
    """
    for name, parameter in module.named_parameters():
        parameter.requires_grad_(name == "batch_bias")
    for layer in module.modules():
        if isinstance(layer, torch.nn.BatchNorm1d):
            layer.momentum = 0.0
    bias = getattr(module, "batch_bias", None)
    if bias is None:
        return
    if n_reference_batches >= bias.shape[0]:
        bias.requires_grad_(False)
        return

    def zero_reference_rows(grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        grad[:n_reference_batches] = 0
        return grad

    bias.register_hook(zero_reference_rows)
