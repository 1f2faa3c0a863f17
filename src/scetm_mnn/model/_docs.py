"""Parameter descriptions shared by the model's output methods: one text, many docstrings.

A docstring line ``%(name)s`` is replaced by ``PARAMETERS[name]``, indented as the line is
(as scvi-tools' ``docrep`` processors do for its own methods).
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable)

PARAMETERS = {
    "adata": """\
adata
    AnnData registered like the training data (default: the model's); held-out cells
    work.""",
    "indices": """\
indices
    Cells to use (default: all).""",
    "batch_size": """\
batch_size
    Cells per forward pass.""",
    "return_mean": """\
return_mean
    Return the mean over the cells (a float) instead of one value per cell.""",
    "groups": """\
groupby
    Column of ``adata.obs`` that defines the groups.
group1
    Group(s) to test, each against ``group2`` (default: every group).
group2
    Reference group (default: all other cells).
idx1
    Instead of ``groupby``: cells of group 1 (mask, indices, or an ``obs`` query).
idx2
    Cells of group 2 with ``idx1`` (default: the rest).""",
    "de_tail": """\
fdr_target
    Posterior expected FDR of the ``is_de_fdr_<target>`` column.
silent
    Hide the progress bar.""",
}

_PLACEHOLDER = re.compile(r"^(?P<indent>[ \t]*)%\((?P<name>\w+)\)s$", re.M)


def shared_parameters(fn: F) -> F:
    """Fill the ``%(name)s`` lines of ``fn``'s docstring from :data:`PARAMETERS`."""

    def fill(match: re.Match) -> str:
        return textwrap.indent(PARAMETERS[match["name"]], match["indent"])

    fn.__doc__ = _PLACEHOLDER.sub(fill, fn.__doc__ or "")
    return fn
