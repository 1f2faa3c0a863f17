"""Docstring text shared by the model's methods: one text, many docstrings.

A docstring line ``%(name)s`` is replaced by ``PARAMETERS[name]`` (parameter descriptions)
or ``EXAMPLES[name]`` (the first lines of an Examples section), indented as the line is
(as scvi-tools' ``docrep`` processors do for its own methods). Doctests run the filled
text. :func:`fill_docstring` does the same from a method's own texts.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Callable, Mapping
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

PARAMETERS["cells"] = "\n".join(PARAMETERS[name] for name in ("adata", "indices", "batch_size"))
"""The three arguments that choose the cells of a per-cell output."""

EXAMPLES = {
    "trained_model": """\
>>> import scetm_mnn as sm
>>> adata = sm.datasets.simulate(n_cells=200, n_genes=50, random_state=0)
>>> sm.model.BatchCorrectedSCETM.setup_anndata(adata, batch_key="batch")
>>> model = sm.model.BatchCorrectedSCETM(adata, n_topics=4, n_emb=8)
>>> model.train(max_epochs=2, enable_progress_bar=False)""",
    "query_split": """\
>>> import scetm_mnn as sm
>>> adata = sm.datasets.simulate(n_cells=300, n_genes=60, n_batches=3, random_state=0)
>>> reference = adata[adata.obs["batch"] != "batch_2"].copy()
>>> query = adata[adata.obs["batch"] == "batch_2"].copy()
>>> sm.model.BatchCorrectedSCETM.setup_anndata(reference, batch_key="batch")
>>> model = sm.model.BatchCorrectedSCETM(reference, n_topics=4, n_emb=8)
>>> model.train(max_epochs=3, enable_progress_bar=False)""",
}
"""``trained_model``: a small model trained on a simulation; ``query_split``: a reference
model trained on two of three simulated batches, and the third batch as its query."""

_PLACEHOLDER = re.compile(r"^(?P<indent>[ \t]*)%\((?P<name>\w+)\)s$", re.M)


def fill_docstring(texts: Mapping[str, str]) -> Callable[[F], F]:
    """A decorator that fills the ``%(name)s`` lines of a docstring from ``texts``.

    For the texts of one method's arguments kept beside the code that reads them (e.g.
    ``_training.PARAMETERS`` for ``train``); :func:`shared_parameters` fills from the
    texts shared by many methods.
    """

    def fill(match: re.Match) -> str:
        return textwrap.indent(texts[match["name"]], match["indent"])

    def decorate(fn: F) -> F:
        fn.__doc__ = _PLACEHOLDER.sub(fill, fn.__doc__ or "")
        return fn

    return decorate


def shared_parameters(fn: F) -> F:
    """Fill ``fn``'s ``%(name)s`` lines (a function's or a class's) from the shared texts."""
    return fill_docstring({**PARAMETERS, **EXAMPLES})(fn)
