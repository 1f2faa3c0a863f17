"""Property tests: odd input either works or raises a documented, helpful error.

Hypothesis draws the cases of ``tests/_fuzz_cases.py`` (1–3 batches, 1–300 cells, 1–50
genes; dense/CSR/CSC/COO; float32/float64/int; NaN, inf, negative and fractional values;
all-zero genes and cells; categorical/str/int batch keys with empty categories; views and
backed objects) for ``pp.preprocess``, ``pp.mnn_correct`` and ``setup_anndata`` + ``train``
+ ``get_latent_representation``. Every call succeeds or raises ``ValueError``, ``KeyError``
or ``TypeError`` with a message from the table of ``docs/bad_input.md``; the caller's
AnnData is unchanged (calls that add keys by design change none that existed).

CI runs 50 examples per property (profile ``ci``); ``pytest -m slow tests/test_fuzz.py``
runs 500 (profile ``slow``). A second test builds each row of the table and checks that it
gives what the table says.
"""

from __future__ import annotations

import logging
import re
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import anndata as ad
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from scipy import sparse

import scetm_mnn as sm
from _fuzz_cases import Spec, assert_unchanged, build, fingerprint, specs
from scetm_mnn.model import BatchCorrectedSCETM

TABLE = Path(__file__).resolve().parents[1] / "docs" / "bad_input.md"
ERRORS = (ValueError, KeyError, TypeError)
BATCH_SIZE = 64
"""Minibatch size of the model property (small, so that a few cells make several steps)."""

_PROFILE = dict(deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
settings.register_profile("ci", max_examples=50, **_PROFILE)
settings.register_profile("slow", max_examples=500, **_PROFILE)
CI = settings.get_profile("ci")
SLOW = settings.get_profile("slow")


class Row(NamedTuple):
    """One row of docs/bad_input.md."""

    what: str
    where: str
    error: str | None
    message: str | None
    open: bool


def _table() -> list[Row]:
    """The rows of docs/bad_input.md, with the error type and message part they name."""
    rows = []
    for line in TABLE.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("|") or len(cells) != 3 or cells[0] in ("What you pass", "---"):
            continue
        error = re.search(r"`(ValueError|KeyError|TypeError)`: `([^`]+)`", cells[2])
        groups = error.groups() if error else (None, None)
        rows.append(Row(cells[0], cells[1], *groups, "**open problem**" in cells[2]))
    return rows


ROWS = _table()


def _pattern(message: str) -> str:
    """The table's message part as a regex: a standalone ``N`` stands for a number."""
    return r"\d+".join(re.escape(part) for part in re.split(r"\bN\b", message))


def assert_documented(error: Exception) -> None:
    """``error`` is one of the table's errors (type and message), and not an open problem."""
    message = str(error.args[0] if isinstance(error, KeyError) else error)
    matches = [
        row
        for row in ROWS
        if row.error == type(error).__name__ and re.search(_pattern(row.message), message)
    ]
    assert matches, f"undocumented {type(error).__name__}: {error}"
    assert not all(row.open for row in matches), f"an open problem was hit: {error}"


def _quiet() -> None:
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "scvi"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _check(
    spec: Spec, call: Callable[[ad.AnnData], None], *, adds: bool, in_place: bool = False
) -> None:
    """Run ``call`` on the case; the outcome is success or a documented error.

    A failing call leaves the caller's AnnData as it was; a successful one too, except for
    the keys it ``adds`` (none that existed change), or anything when it works ``in_place``.
    The object a view was cut from never changes.
    """
    with build(spec) as (adata, parent, error):
        if error is not None:  # anndata refuses COO itself, before any call of ours
            assert_documented(error)
            return
        before = fingerprint(adata)
        parent_before = None if parent is None else fingerprint(parent)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                call(adata)
        except ERRORS as error:
            assert_documented(error)
            assert_unchanged(before, fingerprint(adata), adds=False)
        else:
            if not in_place:
                assert_unchanged(before, fingerprint(adata), adds=adds)
        finally:
            torch.set_num_threads(threads)
        if parent is not None:
            assert_unchanged(parent_before, fingerprint(parent), adds=False)


# -- the three properties -------------------------------------------------------------------


def _preprocess(adata: ad.AnnData) -> None:
    out = sm.pp.preprocess(adata, n_top_genes=20, batch_key="batch", copy=True)
    assert out.n_vars <= 20 and out.n_obs <= adata.n_obs
    assert np.isfinite(sm._validation.matrix_values(out.X)).all()


def _preprocess_in_place(adata: ad.AnnData) -> None:
    n_obs = adata.n_obs
    assert sm.pp.preprocess(adata, n_top_genes=20, batch_key="batch") is None
    assert adata.n_vars <= 20 and adata.n_obs <= n_obs and not adata.is_view
    assert adata.layers["counts"].shape == adata.shape


def _mnn_correct(adata: ad.AnnData) -> None:
    sm.pp.mnn_correct(adata, "batch", max_epochs=1, batch_size=32, pairs_per_epoch=64)
    assert adata.obsm["X_mnn_corrected"].shape[0] == adata.n_obs
    assert np.isfinite(adata.obsm["X_mnn_corrected"]).all()


def _model(adata: ad.AnnData) -> None:
    _quiet()
    BatchCorrectedSCETM.setup_anndata(adata, batch_key="batch")
    model = BatchCorrectedSCETM(adata, n_topics=2, n_emb=4, hidden_sizes=(8,))
    model.train(
        max_epochs=1,
        batch_size=BATCH_SIZE,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        enable_checkpointing=False,
    )
    z = model.get_latent_representation()
    assert z.shape == (adata.n_obs, 2) and np.isfinite(z).all()


def _preprocess_property(spec: Spec) -> None:
    _check(spec, _preprocess, adds=False)


def _preprocess_in_place_property(spec: Spec) -> None:
    _check(spec, _preprocess_in_place, adds=False, in_place=True)


def _mnn_correct_property(spec: Spec) -> None:
    _check(spec, _mnn_correct, adds=True)


def _model_property(spec: Spec) -> None:
    # One cell: train() refuses it after setup_anndata registered the data; the table's
    # row 'A single cell to train on' checks that error. One gene: the model's 2 topics are
    # refused after setup_anndata registered the data; the n_topics row checks that error.
    assume(spec.n_cells > 1 and spec.n_genes > 1)
    _check(spec, _model, adds=True)


PROPERTIES = [
    (_preprocess_property, specs()),
    (_preprocess_in_place_property, specs()),
    (_mnn_correct_property, specs(log=True)),
    (_model_property, specs()),
]
IDS = ["preprocess", "preprocess_in_place", "mnn_correct", "model"]


@pytest.mark.parametrize(("prop", "strategy"), PROPERTIES, ids=IDS)
def test_odd_input_works_or_raises_a_documented_error(prop, strategy):
    given(strategy)(CI(prop))()


@pytest.mark.slow
@pytest.mark.parametrize(("prop", "strategy"), PROPERTIES, ids=IDS)
def test_odd_input_works_or_raises_a_documented_error_slow(prop, strategy):
    given(strategy)(SLOW(prop))()


# -- each row of docs/bad_input.md -----------------------------------------------------------


def _counts(n_batches: int = 2) -> ad.AnnData:
    adata = sm.datasets.simulate(n_cells=80, n_genes=30, n_batches=n_batches, random_state=0)
    adata.X = adata.X.toarray() if sparse.issparse(adata.X) else np.asarray(adata.X)
    return adata


def _log(n_batches: int = 2) -> ad.AnnData:
    return sm.pp.preprocess(_counts(n_batches), n_top_genes=30, batch_key="batch", copy=True)


def _set(adata: ad.AnnData, value, dtype=None) -> ad.AnnData:
    x = np.asarray(adata.X, dtype=dtype or np.float64)
    x[0, 0] = value
    adata.X = x
    return adata


def _pp(adata, **kwargs):
    return sm.pp.preprocess(
        adata, **{"n_top_genes": 20, "batch_key": "batch", "copy": True, **kwargs}
    )


def _mnn(adata, **kwargs):
    kwargs = {"batch_key": "batch", **kwargs}
    return sm.pp.mnn_correct(adata, max_epochs=1, batch_size=32, pairs_per_epoch=64, **kwargs)


def _setup(adata, **kwargs):
    BatchCorrectedSCETM.setup_anndata(adata, **{"batch_key": "batch", **kwargs})


def _missing_batch(adata: ad.AnnData) -> ad.AnnData:
    column = adata.obs["batch"].astype(object)
    column.iloc[0] = None
    adata.obs["batch"] = column
    return adata


def _backed(adata: ad.AnnData, folder: str, fmt: str = "csr") -> ad.AnnData:
    adata = adata.copy()
    adata.X = getattr(sparse, f"{fmt}_matrix")(adata.X)
    path = Path(folder) / f"{len(list(Path(folder).iterdir()))}.h5ad"
    adata.write_h5ad(path)
    return ad.read_h5ad(path, backed="r")


def _no_pairs() -> ad.AnnData:
    adata = ad.AnnData(np.zeros((2, 1), dtype=np.float32))
    adata.obs["batch"] = ["a", "b"]
    return adata


def _key_kinds(adata: ad.AnnData) -> list[ad.AnnData]:
    out = []
    for kind in ("categorical", "str", "int"):
        a = adata.copy()
        codes = a.obs["batch"].astype("category").cat.codes.to_numpy()
        if kind == "categorical":
            a.obs["batch"] = a.obs["batch"].astype("category").cat.add_categories(["empty"])
        elif kind == "str":
            a.obs["batch"] = np.array(["x", "y"])[codes].astype(object)
        else:
            a.obs["batch"] = codes * 10 + 1
        out.append(a)
    return out


def _storages(adata: ad.AnnData) -> list[ad.AnnData]:
    out = []
    for dtype in (np.float32, np.float64, np.int64):
        for fmt in ("dense", "csr", "csc"):
            a = adata.copy()
            x = np.asarray(a.X).astype(dtype)
            a.X = x if fmt == "dense" else getattr(sparse, f"{fmt}_matrix")(x)
            out.append(a)
    return out


def _zeros(adata: ad.AnnData) -> ad.AnnData:
    x = np.array(adata.X)
    x[:, :3] = 0
    x[:2] = 0
    adata.X = x
    return adata


def _view_works(folder: str) -> None:
    parent = _counts()
    before = fingerprint(parent)
    _preprocess_in_place(parent[5:])
    log = _log()
    log_before = fingerprint(log)
    view = log[3:]
    _mnn(view)
    assert not view.is_view and "mnn_corrected" in view.uns
    assert_unchanged(before, fingerprint(parent), adds=False)
    assert_unchanged(log_before, fingerprint(log), adds=False)


def _single_batch() -> None:
    with pytest.warns(UserWarning, match="holds a single batch, so there is nothing to correct"):
        _mnn(_log(n_batches=1))


def _model_and_pp(adata: ad.AnnData) -> None:
    _pp(adata)
    _model(adata)


CASES: dict[str, Callable[[str], list[Callable[[], object]]]] = {
    "NaN or infinite values": lambda d: [
        lambda: _pp(_set(_counts(), np.nan)),
        lambda: _setup(_set(_counts(), np.inf)),
        lambda: _mnn(_set(_log(), np.nan)),
    ],
    "Negative values where counts belong": lambda d: [
        lambda: _pp(_set(_counts(), -1)),
        lambda: _setup(_set(_counts(), -1)),
    ],
    "Fractional values where counts belong (normalized or log data)": lambda d: [
        lambda: _pp(_log()),
        lambda: _setup(_set(_counts(), 0.5)),
    ],
    "Raw counts where log-scale data belong": lambda d: [lambda: _mnn(_counts())],
    "A matrix of booleans, strings or objects": lambda d: [
        lambda: _pp(_set(_counts(), True, bool)),
        lambda: _setup(_set(_counts(), True, bool)),
        lambda: _mnn(_set(_log(), True, bool)),
    ],
    "A COO matrix as `X` or a layer": lambda d: [
        lambda: ad.AnnData(sparse.coo_matrix(_counts().X)),
    ],
    "A `batch_key` that is not an `obs` column": lambda d: [
        lambda: _pp(_counts(), batch_key="donor"),
        lambda: _mnn(_log(), batch_key="donor"),
        lambda: _setup(_counts(), batch_key="donor"),
    ],
    "A `batch_key` column with missing values": lambda d: [
        lambda: _pp(_missing_batch(_counts())),
        lambda: _mnn(_missing_batch(_log())),
        lambda: _setup(_missing_batch(_counts())),
    ],
    "A layer that does not exist": lambda d: [
        lambda: _mnn(_log(), layer="corrected"),
        lambda: _setup(_counts(), layer="raw"),
    ],
    "Filters that leave no cells or genes (e.g. one cell, `min_cells=3`)": lambda d: [
        lambda: _pp(_counts()[:1].copy()),
    ],
    "Batches without mutual nearest neighbours": lambda d: [lambda: _mnn(_no_pairs())],
    "A view of an AnnData": lambda d: [lambda: _setup(_counts()[3:])],
    "A view of a backed AnnData": lambda d: [
        lambda: _mnn(_backed(_log(), d)[3:]),
        lambda: _setup(_backed(_counts(), d)[3:]),
    ],
    "A backed AnnData without `filename=`": lambda d: [lambda: _pp(_backed(_counts(), d))],
    'An unknown `compression` (not `"lzf"`, `"gzip"` or `None`)': lambda d: [
        lambda: _pp(_backed(_counts(), d), filename=Path(d) / "p.h5ad", compression="zstd"),
        lambda: sm.datasets.simulate(filename=Path(d) / "s.h5ad", compression="zstd"),
    ],
    "A backed AnnData whose `X` is CSC": lambda d: [
        lambda: _mnn(_backed(_log(), d, "csc")),
        lambda: _setup(_backed(_counts(), d, "csc")),
    ],
    "Float32, float64 or integer values; dense, CSR or CSC": lambda d: [
        *(lambda a=a: _pp(a) and _setup(a) for a in _storages(_counts())),
        lambda: _mnn(_log()),
    ],
    "A batch key that is categorical (unused categories too), strings or integers": lambda d: [
        *(lambda a=a: _model_and_pp(a) for a in _key_kinds(_counts())),
        *(lambda a=a: _mnn(a) for a in _key_kinds(_log())),
    ],
    "All-zero genes or cells": lambda d: [
        lambda: _model_and_pp(_zeros(_counts())),
        lambda: _mnn(_zeros(_log())),
    ],
    "One batch": lambda d: [_single_batch],
    "A view of an in-memory AnnData": lambda d: [lambda: _view_works(d)],
    "A backed AnnData (`X` dense or CSR)": lambda d: [
        lambda: _mnn(_backed(_log(), d)),
        lambda: _model(_backed(_counts(), d)),
    ],
    "A single cell to train on": lambda d: [lambda: _model(_counts()[:1].copy())],
    "`n_topics` below 2 or above the number of genes (e.g. one gene)": lambda d: [
        lambda: _model(_counts()[:, :1].copy())
    ],
}


def test_the_table_and_the_cases_name_the_same_inputs():
    assert [row.what for row in ROWS] == list(CASES)


@pytest.mark.parametrize(
    "row",
    [
        pytest.param(
            row,
            id=row.what[:40],
            marks=[
                pytest.mark.xfail(
                    strict=True, reason="open problem: train() on one cell (torch BatchNorm)"
                )
            ]
            if row.open
            else [],
        )
        for row in ROWS
    ],
)
def test_each_row_of_the_table_gives_what_it_says(row):
    _quiet()
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        warnings.simplefilter("ignore", ad.ImplicitModificationWarning)
        for call in CASES[row.what](folder):
            if row.open:  # the open problem: it should work, or say what to change
                try:
                    call()
                except ERRORS as error:
                    assert_documented(error)
            elif row.error is None:
                call()
            else:
                expected = {"ValueError": ValueError, "KeyError": KeyError}.get(
                    row.error, TypeError
                )
                with pytest.raises(expected, match=_pattern(row.message)):
                    call()
