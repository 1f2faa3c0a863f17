"""Docstring text shared by the model's methods: one text, many docstrings.

A docstring line ``%(name)s`` is replaced by ``PARAMETERS[name]`` (parameter descriptions)
or ``EXAMPLES[name]`` (the first lines of an Examples section), indented as the line is
(as scvi-tools' ``docrep`` processors do for its own methods), by the package's one
filler, ``scetm_mnn._docstrings.fill_docstring``. Doctests run the filled text.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from .._docstrings import EXAMPLES as BASE_EXAMPLES
from .._docstrings import PARAMETERS as BASE_PARAMETERS
from .._docstrings import fill_docstring

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
    "trained_model": f"""{BASE_EXAMPLES["registered"]}
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


def shared_parameters(fn: F) -> F:
    """Fill ``fn``'s ``%(name)s`` lines (a function's or a class's) from the shared texts.

    The model's shared argument texts and examples, and the package's
    (``scetm_mnn._docstrings.EXAMPLES``).
    """
    return fill_docstring({**BASE_PARAMETERS, **BASE_EXAMPLES, **PARAMETERS, **EXAMPLES})(fn)
