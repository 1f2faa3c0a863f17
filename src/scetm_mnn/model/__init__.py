"""User-facing models: :class:`BatchCorrectedSCETM` and the mixins that give its outputs."""

from ._de import DEMixin
from ._elbo import LikelihoodMixin
from ._expression import ExpressionMixin
from ._outputs import TopicOutputsMixin
from ._pruning import TopicPruningMixin
from ._query import QueryMixin
from ._reference import freeze_reference
from ._save_load import SaveLoadMixin
from ._scetm import BatchCorrectedSCETM
from ._training import default_max_epochs

__all__ = [
    "BatchCorrectedSCETM",
    "DEMixin",
    "ExpressionMixin",
    "LikelihoodMixin",
    "QueryMixin",
    "SaveLoadMixin",
    "TopicOutputsMixin",
    "TopicPruningMixin",
    "default_max_epochs",
    "freeze_reference",
]
