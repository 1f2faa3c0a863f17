"""Docstring text written once and filled into many docstrings.

A docstring line that holds only ``%(name)s`` is replaced by the text ``name``, indented as
the line is (as scvi-tools' ``docrep`` processors do). Doctests and the rendered docs read
the filled text. :func:`fill_docstring` fills from any table of texts (a function's own
parameters, the corrector's parameter table, the model's shared arguments);
:func:`shared_docstring` fills from :data:`PARAMETERS` and :data:`EXAMPLES`, the
parameter texts and the opening lines of the examples that many functions share.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Callable, Mapping
from typing import TypeVar

F = TypeVar("F", bound=Callable)

_SIMULATED = """\
>>> import scetm_mnn as sm
>>> adata = sm.datasets.simulate(n_cells=300, n_genes=200, n_batches=2, n_cell_types=3)
>>> sm.pp.preprocess(adata, n_top_genes=200, batch_key="batch")"""

_SWEEP = """\
>>> import pandas as pd
>>> import scetm_mnn as sm
>>> sweep = pd.DataFrame(
...     {
...         "resolution": [0.1, 0.5, 1.0],
...         "n_clusters": [3, 5, 9],
...         "ARI": [0.6, 0.9, 0.7],
...         "NMI": [0.7, 0.85, 0.8],
...         "bARI": [0.05, 0.02, 0.01],
...     }
... )"""

_AGG = """\
>>> import matplotlib
>>> matplotlib.use("Agg")"""

EXAMPLES = {
    "simulated": _SIMULATED,
    "simulated_pca": f""">>> import scanpy as sc
{_SIMULATED}
>>> sc.pp.pca(adata, n_comps=10, random_state=0)""",
    "simulated_model": f"""{_AGG}
{_SIMULATED}
>>> sm.model.BatchCorrectedSCETM.setup_anndata(adata, layer="counts", batch_key="batch")
>>> model = sm.model.BatchCorrectedSCETM(adata, n_topics=6, n_emb=16)""",
    "three_batches": """\
>>> import scetm_mnn as sm
>>> adata = sm.datasets.simulate(n_cells=600, n_genes=100, n_batches=3, random_state=0)
>>> sm.pp.preprocess(adata, n_top_genes=100, batch_key="batch")""",
    "registered": """\
>>> import scetm_mnn as sm
>>> adata = sm.datasets.simulate(n_cells=200, n_genes=50, random_state=0)
>>> sm.model.BatchCorrectedSCETM.setup_anndata(adata, batch_key="batch")""",
    "sweep_table": _SWEEP,
    "sweep_figure": f"{_AGG}\n{_SWEEP}",
    "agg": _AGG,
}
"""The opening lines of examples that many docstrings share.

``simulated``: 300 simulated cells of 3 types in 2 batches, preprocessed (200 genes);
``simulated_pca``: the same with a 10-component PCA in ``obsm["X_pca"]``;
``simulated_model``: the same with an untrained ``model`` of 6 topics (and matplotlib's
non-interactive backend); ``three_batches``: 600 preprocessed cells in 3 batches (100
genes); ``registered``: 200 raw-count cells registered with the model; ``sweep_table``: a
three-row Leiden sweep table ``sweep``; ``sweep_figure``: the same for a figure; ``agg``:
matplotlib's non-interactive backend.
"""

PARAMETERS = {
    "embedding": """\
adata
    Annotated data; not modified.
use_rep
    Key of ``adata.obsm`` holding the embedding (or ``"X"``).""",
}
"""Parameter texts that many functions share: ``embedding``, the ``adata`` and ``use_rep``
of a function that reads an embedding and writes nothing."""

_PLACEHOLDER = re.compile(r"^(?P<indent>[ \t]*)%\((?P<name>\w+)\)s$", re.M)


def fill_docstring(texts: Mapping[str, str]) -> Callable[[F], F]:
    """A decorator that fills the ``%(name)s`` lines of a docstring from ``texts``.

    Each such line becomes ``texts[name]``, dedented and then indented as the line was. A
    name that ``texts`` lacks raises ``KeyError`` at import, so a typo cannot reach the
    docs.
    """

    def fill(match: re.Match) -> str:
        return textwrap.indent(textwrap.dedent(texts[match["name"]]), match["indent"])

    def decorate(fn: F) -> F:
        fn.__doc__ = _PLACEHOLDER.sub(fill, fn.__doc__ or "")
        return fn

    return decorate


def shared_docstring(fn: F) -> F:
    """Fill ``fn``'s ``%(name)s`` lines (a function's or a class's) from the shared texts.

    The texts are those of :data:`PARAMETERS` and :data:`EXAMPLES`.
    """
    return fill_docstring({**PARAMETERS, **EXAMPLES})(fn)
