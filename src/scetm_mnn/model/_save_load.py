"""Saving and loading a model: plain-data files, read back with ``weights_only=True``.

:meth:`SaveLoadMixin.save` is scvi-tools' ``BaseModelClass.save`` with the attributes
handed over already encoded (:func:`~scetm_mnn.model._serialization.encode_attributes`),
written by one process only; :meth:`SaveLoadMixin.load` reads the file once, with torch's
restricted unpickler, and rebuilds the model of the class it is called on.

Two private scvi-tools helpers, pinned by scvi-tools>=1.4,<1.5, have no public
equivalent: ``_initialize_model`` rebuilds a model from its saved ``init_params_``
(``BaseModelClass.load`` does the same, but unpickles with ``weights_only=False``);
``parse_device_args`` turns accelerator/device into a torch device as every scvi-tools
model's load does. The mixin also overrides ``BaseModelClass._get_user_attributes`` (what
``save`` writes).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Self

import numpy as np
import pandas as pd
import torch
from anndata import AnnData, read_h5ad
from scvi.model._utils import parse_device_args
from scvi.model.base._save_load import _initialize_model

from .._atomic import atomic_dir
from .._disk import anndata_bytes, check_free_space
from ._docs import shared_parameters
from ._serialization import (
    FORMAT,
    FORMAT_KEY,
    MODEL_FILE,
    encode_attributes,
    model_path,
    read_model_file,
)

logger = logging.getLogger(__name__)


def torch_device(accelerator: str, device: int | str) -> torch.device:
    """The torch device for ``accelerator`` and ``device``, as scvi-tools' ``load`` picks it."""
    _, _, found = parse_device_args(
        accelerator=accelerator,
        devices=device,
        return_device="torch",
        validate_single_device=True,
    )
    return found


def check_genes(adata: AnnData, var_names: np.ndarray) -> None:
    """``adata`` has the genes a saved model was trained on, in their order."""
    if not np.array_equal(var_names, np.asarray(adata.var_names)):
        missing = pd.Index(var_names).difference(adata.var_names)
        raise ValueError(
            f"adata's genes differ from the {len(var_names)} genes the model was "
            f"trained on ({len(missing)} missing, {adata.n_vars} given). Subset and "
            "order them first: adata = adata[:, model_genes].copy(), with model_genes "
            "read from the training data."
        )


@shared_parameters
class SaveLoadMixin:
    """Save a model to a folder and load it back, with plain data only in the file.

    Mixed into :class:`~scetm_mnn.model.BatchCorrectedSCETM`, ahead of scvi-tools'
    ``BaseModelClass``, whose ``save`` it wraps and whose ``load`` it replaces: the model
    file holds tensors, numbers, strings, containers and numpy arrays, and loads with
    ``torch.load(..., weights_only=True)``, so a tampered file gets an error, never runs.

    Examples
    --------
    %(trained_model)s
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     model.save(folder, overwrite=True)
    ...     loaded = sm.model.BatchCorrectedSCETM.load(folder, adata=adata)
    >>> np.array_equal(loaded.get_latent_representation(), model.get_latent_representation())
    True
    """

    def save(
        self,
        dir_path: str,
        prefix: str | None = None,
        overwrite: bool = False,
        save_anndata: bool = False,
        **kwargs,
    ) -> None:
        """Save the model atomically (as :meth:`scvi.model.base.BaseModelClass.save`); rank 0 only.

        The folder is written whole as a temporary sibling and then swapped in: a reader,
        or a save that is killed, sees the old folder or the new one, never a mix (see
        ``docs/troubleshooting.md``). Files of ``dir_path`` that this save does not write
        (another prefix's model) are kept. The file loads with
        ``torch.load(..., weights_only=True)``: the training history is kept as plain
        lists. After data-parallel training every process holds the same model; only the
        process of global rank 0 writes, so that N processes do not write one folder at
        once.

        Parameters
        ----------
        dir_path
            Folder to save to.
        prefix
            File-name prefix.
        overwrite
            Replace an existing folder; when false, an existing ``dir_path`` raises
            :class:`FileExistsError` and is left untouched.
        save_anndata
            Also save the AnnData (``adata.h5ad``).
        **kwargs
            Passed to :meth:`scvi.model.base.BaseModelClass.save` (``save_kwargs``, ...).

        Raises
        ------
        FileExistsError
            ``dir_path`` exists and ``overwrite`` is false.
        OSError
            With ``errno.ENOSPC`` when the disk has too little space, checked before the
            write or met during it; nothing is left behind.
        """
        trainer = getattr(self, "trainer", None)
        if trainer is not None and not trainer.is_global_zero:
            logger.info("Not saving on rank %d; rank 0 saves the model.", trainer.global_rank)
            return
        check_free_space(dir_path, self._saved_bytes(save_anndata), "the model")
        owned = {f"{prefix or ''}{name}" for name in (MODEL_FILE, "adata.h5ad", "mdata.h5mu")}
        with atomic_dir(dir_path, overwrite=overwrite, keep=lambda name: name not in owned) as tmp:
            super().save(
                str(tmp), prefix=prefix, overwrite=True, save_anndata=save_anndata, **kwargs
            )
        logger.info("Saved the model to %s.", dir_path)

    def _saved_bytes(self, save_anndata: bool) -> int:
        """About how many bytes :meth:`save` writes: the weights, and the AnnData if saved."""
        weights = sum(t.numel() * t.element_size() for t in self.module.state_dict().values())
        return weights + (anndata_bytes(self.adata) if save_anndata else 0) + (1 << 16)

    def _get_user_attributes(self) -> list[tuple[str, Any]]:
        # scvi-tools' (private) hook that collects what ``save`` writes: hand it the
        # attributes in types that torch.load(weights_only=True) reads back.
        return [*encode_attributes(super()._get_user_attributes()), (FORMAT_KEY, FORMAT)]

    @classmethod
    def load(
        cls,
        dir_path: str,
        adata: AnnData | None = None,
        prefix: str | None = None,
        accelerator: str = "auto",
        device: int | str = "auto",
    ) -> Self:
        """Load a saved model, checking that ``adata`` has the genes it was trained on.

        The model file is read once, with ``torch.load(..., weights_only=True)``: a file
        that holds anything but tensors and plain data gets a clear error, never runs.

        Parameters
        ----------
        dir_path
            Folder written by ``model.save(dir_path)``.
        adata
            AnnData to attach (default: the one saved with the model, if any).
        prefix
            File-name prefix used when saving.
        accelerator, device
            Where to put the model, as in :meth:`scvi.model.base.BaseModelClass.load`.

        Raises
        ------
        FileNotFoundError
            No model file in ``dir_path``.
        ValueError
            The file is truncated, not a model file, another model's (another scvi-tools
            model, or a file with objects that are not plain data), or of a newer layout;
            the message names the file and the reason.
        """
        device = torch_device(accelerator, device)
        saved = read_model_file(model_path(dir_path, prefix), map_location=device)
        attrs, var_names = saved["attr_dict"], np.asarray(saved.get("var_names"))
        registry = attrs.pop("registry_")
        if registry.get("model_name", cls.__name__) != cls.__name__:
            raise ValueError(
                f"{dir_path} holds a {registry['model_name']}, not a {cls.__name__}; "
                f"load it with {registry['model_name']}.load."
            )
        if adata is None:
            saved_adata = Path(dir_path) / f"{prefix or ''}adata.h5ad"
            if not saved_adata.exists():
                raise ValueError(
                    f"No AnnData was saved in {dir_path}; pass the data: "
                    f"{cls.__name__}.load(dir_path, adata=adata)."
                )
            adata = read_h5ad(saved_adata)
        check_genes(adata, var_names)
        cls.setup_anndata(adata, source_registry=registry, **registry["setup_args"])
        model = _initialize_model(cls, adata, registry, attrs, None)
        state = saved["model_state_dict"]
        model.module.on_load(model, pyro_param_store=state.pop("pyro_param_store", None))
        model.module.load_state_dict(state)
        model.to_device(device)
        model.module.eval()
        model._validate_anndata(adata)
        return model
