"""User-facing models: :class:`BatchCorrectedSCETM`."""

from ._scetm import BatchCorrectedSCETM, default_max_epochs

__all__ = ["BatchCorrectedSCETM", "default_max_epochs"]
