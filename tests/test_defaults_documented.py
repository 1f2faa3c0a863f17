"""The defaults that the docs state are the code's: parameters.md, the docstrings, the README.

Each documented default is parsed from the text and compared with the signature or the
constant it names, so changing a default without its documentation fails here.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from scetm_mnn import pp
from scetm_mnn.model import BatchCorrectedSCETM, _pruning, _relevance
from scetm_mnn.model._training import DEFAULT_MNN_WEIGHT

ROOT = Path(__file__).resolve().parents[1]
PARAMETERS = (ROOT / "docs" / "parameters.md").read_text()
README = (ROOT / "README.md").read_text()


def _table_default(setting: str) -> str:
    """The default column of the parameters.md row whose first cell starts with ``setting``."""
    for line in PARAMETERS.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and cells[0].startswith(setting):
            return cells[1]
    raise AssertionError(f"docs/parameters.md has no row for {setting}")


def _number(text: str) -> float:
    text = text.replace(",", "").strip("`")
    fraction = re.fullmatch(r"([\d.]+)\s*/\s*K", text)
    if fraction:
        return float(fraction.group(1))
    return float(text)


def _default(function, name: str):
    return inspect.signature(function).parameters[name].default


MODEL_ROWS = [
    ("`n_topics`", BatchCorrectedSCETM.__init__, "n_topics"),
    ("`n_emb`", BatchCorrectedSCETM.__init__, "n_emb"),
    ("`train(batch_size=256)`", BatchCorrectedSCETM.train, "batch_size"),
    ("`prune_topics(max_overlap=0.8)`", BatchCorrectedSCETM.prune_topics, "max_overlap"),
    ("`get_top_genes(relevance=0.6)`", BatchCorrectedSCETM.get_top_genes, "relevance"),
]
CORRECTOR_ROWS = [
    "n_neighbors",
    "n_search_comps",
    "search_rounds",
    "n_comps",
    "rec_weight",
    "lr",
    "devices",
]


@pytest.mark.parametrize(("row", "function", "name"), MODEL_ROWS, ids=[r[2] for r in MODEL_ROWS])
def test_the_model_table_states_the_signature_defaults(row, function, name):
    assert _number(_table_default(row)) == _default(function, name)


@pytest.mark.parametrize("name", CORRECTOR_ROWS)
def test_the_corrector_table_states_the_signature_defaults(name):
    stated = _table_default(f"`{name}`")
    assert _number(stated.split()[0]) == _default(pp.mnn_correct, name), stated
    assert _default(pp.mnn_correct, name) == _default(pp.MNNCorrector, name)


def test_hidden_sizes_row():
    hidden = _default(BatchCorrectedSCETM.__init__, "hidden_sizes")
    assert _table_default("`hidden_sizes`") == f"`{hidden}`"


def test_the_pruning_defaults_agree_everywhere():
    assert _default(BatchCorrectedSCETM.prune_topics, "max_overlap") == _pruning.MAX_OVERLAP
    assert _number(_table_default("`prune_topics(min_usage=None)`")) == _pruning.DEAD_FRACTION
    text = inspect.getdoc(BatchCorrectedSCETM.prune_topics)
    assert f"``{_pruning.DEAD_FRACTION} / K``" in text
    assert f"{round(100 * _pruning.MAX_OVERLAP)} %" in PARAMETERS


def test_the_relevance_weight_agrees_everywhere():
    weight = _relevance.RELEVANCE_WEIGHT
    assert _default(BatchCorrectedSCETM.get_topic_gene_relevance, "weight") == weight
    assert _default(BatchCorrectedSCETM.get_top_genes, "relevance") == weight
    assert f"$\\lambda = {weight:g}$" in (ROOT / "docs" / "user_guide.md").read_text()


def test_the_mnn_weight_default_agrees_everywhere():
    assert _default(BatchCorrectedSCETM.train, "mnn_weight") is None  # resolved per model
    assert _number(_table_default("`train(mnn_weight=None)`")) == DEFAULT_MNN_WEIGHT
    doc = inspect.getdoc(BatchCorrectedSCETM.train)
    assert f"``DEFAULT_MNN_WEIGHT`` ({DEFAULT_MNN_WEIGHT:g})" in " ".join(doc.split())
    assert f"on by\ndefault at weight {DEFAULT_MNN_WEIGHT:g}" in PARAMETERS
    readme = " ".join(README.split())
    match = re.search(r"MNN term \(off by default under the default encoder.*?; weight "
                      r"(\d+(?:\.\d+)?) with a hidden layer", readme)  # fmt: skip
    assert match, "README must say the MNN term's default"
    assert float(match.group(1)) == DEFAULT_MNN_WEIGHT
