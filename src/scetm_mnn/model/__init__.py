"""User-facing models: :class:`BatchCorrectedSCETM` and the mixins that give its outputs."""

from ._de import DEMixin
from ._elbo import LikelihoodMixin
from ._expression import ExpressionMixin
from ._query import QueryMixin, freeze_reference
from ._scetm import BatchCorrectedSCETM, default_max_epochs

__all__ = [
    "BatchCorrectedSCETM",
    "DEMixin",
    "ExpressionMixin",
    "LikelihoodMixin",
    "QueryMixin",
    "default_max_epochs",
    "freeze_reference",
]
