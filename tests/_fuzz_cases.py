"""Odd AnnData inputs for the property tests (tests/test_fuzz.py): strategies and fingerprints.

A case is drawn as a small :class:`Spec` (sizes, storage, dtype, defects, batch-key kind,
container) and built with numpy from a drawn seed, so that hypothesis only draws a few
integers per example and shrinks to a readable spec.
"""

from __future__ import annotations

import contextlib
import hashlib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
from hypothesis import strategies as st
from scipy import sparse

FORMATS = ("dense", "csr", "csc", "coo")
DTYPES = ("float32", "float64", "int64", "int32")
DEFECTS = (None, None, None, "nan", "inf", "negative", "fraction")
KEY_KINDS = ("categorical", "str", "int")
CONTAINERS = ("memory", "memory", "view", "backed", "backed_view")


@dataclass(frozen=True)
class Spec:
    """What one drawn case holds; ``build`` turns it into an AnnData."""

    n_cells: int
    n_genes: int
    n_batches: int
    seed: int
    format: str
    dtype: str
    defect: str | None
    zero_genes: bool
    zero_cells: bool
    key_kind: str
    empty_batch: bool
    container: str
    log: bool = False


@st.composite
def specs(draw, log: bool = False, max_cells: int = 300, max_genes: int = 50) -> Spec:
    """1–3 batches, 1–``max_cells`` cells, 1–``max_genes`` genes and every defect."""
    return Spec(
        n_cells=draw(st.integers(1, max_cells)),
        n_genes=draw(st.integers(1, max_genes)),
        n_batches=draw(st.integers(1, 3)),
        seed=draw(st.integers(0, 2**16)),
        format=draw(st.sampled_from(FORMATS)),
        dtype=draw(st.sampled_from(DTYPES)),
        defect=draw(st.sampled_from(DEFECTS)),
        zero_genes=draw(st.booleans()),
        zero_cells=draw(st.booleans()),
        key_kind=draw(st.sampled_from(KEY_KINDS)),
        empty_batch=draw(st.booleans()),
        container=draw(st.sampled_from(CONTAINERS)),
        log=log,
    )


def _values(spec: Spec, rng: np.random.Generator, batch: np.ndarray) -> np.ndarray:
    """Counts with a few shared cell types and a batch shift (log1p-normalized if ``log``)."""
    n_types = min(3, spec.n_cells)
    types = rng.integers(0, n_types, spec.n_cells)
    profile = rng.gamma(1.0, 2.0, (n_types, spec.n_genes))
    shift = rng.gamma(5.0, 0.2, (spec.n_batches, spec.n_genes))
    x = rng.poisson(profile[types] * shift[batch]).astype(np.float64)
    if spec.zero_genes and spec.n_genes > 1:
        x[:, rng.random(spec.n_genes) < 0.3] = 0
    if spec.zero_cells and spec.n_cells > 1:
        x[rng.random(spec.n_cells) < 0.2] = 0
    if spec.log:
        total = x.sum(1, keepdims=True)
        x = np.log1p(np.divide(x * 1e4, total, out=np.zeros_like(x), where=total > 0))
    defect = spec.defect
    if defect is not None:
        i, j = rng.integers(0, spec.n_cells), rng.integers(0, spec.n_genes)
        x[i, j] = {"nan": np.nan, "inf": np.inf, "negative": -1.0, "fraction": 0.5}[defect]
    return x


def _storage(spec: Spec, x: np.ndarray):
    dtype = np.dtype(spec.dtype)
    if dtype.kind == "i":
        x = np.nan_to_num(x, nan=0, posinf=0).astype(dtype)  # NaN/inf do not exist in ints
    else:
        x = x.astype(dtype)
    if spec.format == "dense":
        return x
    return getattr(sparse, f"{spec.format}_matrix")(x)


def _batches(spec: Spec, rng: np.random.Generator) -> tuple[np.ndarray, pd.Series]:
    codes = rng.integers(0, spec.n_batches, spec.n_cells)
    names = np.array([f"b{k}" for k in range(spec.n_batches)])
    if spec.key_kind == "int":
        column = pd.Series(codes * 10 + 1)
    elif spec.key_kind == "str":
        column = pd.Series(names[codes], dtype=object)
    else:
        categories = [*names, "empty"] if spec.empty_batch else list(names)
        column = pd.Series(pd.Categorical(names[codes], categories=categories))
    return codes, column


@contextlib.contextmanager
def build(spec: Spec) -> Iterator[tuple[ad.AnnData | None, ad.AnnData | None, Exception | None]]:
    """Yield ``(adata, parent, error)``: the AnnData a user would pass, the object it is a
    view of (``None`` unless a view), or the error anndata itself raised building it (COO)."""
    rng = np.random.default_rng(spec.seed)
    # A view selects cells of a larger object: build extra cells, then drop them.
    extra = 7 if spec.container.endswith("view") else 0
    grown = Spec(**{**spec.__dict__, "n_cells": spec.n_cells + extra})
    codes, column = _batches(grown, rng)
    x = _storage(grown, _values(grown, rng, codes))
    obs = pd.DataFrame(
        {"batch": column.array, "other": np.arange(grown.n_cells)},
        index=[f"c{i}" for i in range(grown.n_cells)],
    )
    var = pd.DataFrame(index=[f"g{j}" for j in range(grown.n_genes)])
    try:
        adata = ad.AnnData(x, obs=obs, var=var, uns={"note": {"kept": np.arange(3)}})
    except ValueError as error:  # anndata refuses COO (and only COO) itself
        yield None, None, error
        return
    adata.obsm["X_other"] = np.ones((grown.n_cells, 2))
    with tempfile.TemporaryDirectory() as tmp:
        if spec.container.startswith("backed"):
            path = Path(tmp) / "case.h5ad"
            adata.write_h5ad(path)
            adata = ad.read_h5ad(path, backed="r")
        try:
            if extra:
                parent = adata
                keep = np.sort(rng.choice(grown.n_cells, spec.n_cells, replace=False))
                yield parent[keep], parent, None
            else:
                yield adata, None, None
        finally:
            if adata.isbacked:
                adata.file.close()


# -- fingerprints ---------------------------------------------------------------------------


def _digest(value) -> str:
    h = hashlib.sha256()
    _feed(h, value)
    return h.hexdigest()


def _feed(h, value) -> None:
    if sparse.issparse(value):
        h.update(f"{value.format}{value.shape}{value.dtype}".encode())  # views: same format
        for part in ("data", "indices", "indptr", "row", "col"):
            if hasattr(value, part):
                h.update(np.ascontiguousarray(getattr(value, part)).tobytes())
    elif isinstance(value, np.ndarray):
        h.update(f"ndarray{value.shape}{value.dtype}".encode())
        h.update(np.ascontiguousarray(value).tobytes() if value.dtype != object else b"")
        if value.dtype == object:
            h.update(repr(value.tolist()).encode())
    elif isinstance(value, pd.DataFrame):
        h.update(repr(list(value.columns)).encode() + repr(value.dtypes.to_dict()).encode())
        h.update(repr(list(value.index)).encode())
        for column in value.columns:
            _feed(h, value[column])
    elif isinstance(value, pd.Series):
        h.update(repr(value.dtype).encode())
        if isinstance(value.dtype, pd.CategoricalDtype):
            h.update(repr(list(value.cat.categories)).encode())
        h.update(pd.util.hash_pandas_object(value, index=True).to_numpy().tobytes())
    elif isinstance(value, dict) or hasattr(value, "keys"):
        for key in sorted(value.keys(), key=str):
            h.update(repr(key).encode())
            _feed(h, value[key])
    else:
        h.update(repr(value).encode())


def fingerprint(adata: ad.AnnData) -> dict[str, str]:
    """One digest per pre-existing element: X (or the backing file), each layer, obs and var
    (per column), each obsm/varm/obsp key and each uns key, plus the shape and view state."""
    out = {"shape": repr(adata.shape), "is_view": repr(adata.is_view)}
    if adata.isbacked:
        out["X"] = hashlib.sha256(Path(adata.filename).read_bytes()).hexdigest()
    else:
        out["X"] = _digest(adata.X)
    out["obs_names"] = _digest(pd.Series(adata.obs_names))
    out["var_names"] = _digest(pd.Series(adata.var_names))
    for attr in ("obs", "var"):
        frame = getattr(adata, attr)
        for column in frame.columns:
            out[f"{attr}[{column!r}]"] = _digest(frame[column])
    for attr in ("layers", "obsm", "varm", "obsp", "uns"):
        mapping = getattr(adata, attr)
        for key in mapping.keys():
            out[f"{attr}[{key!r}]"] = _digest(mapping[key])
    return out


def assert_unchanged(before: dict[str, str], after: dict[str, str], *, adds: bool) -> None:
    """Every pre-existing element is unchanged; new keys only where the call ``adds`` them."""
    # A view passed to a call that adds keys becomes an actual AnnData (anndata's copy on
    # write); its contents must not change.
    ignored = {"is_view"} if adds else set()
    changed = sorted(k for k in before if k not in ignored and after.get(k) != before[k])
    assert not changed, f"the caller's AnnData changed: {changed}"
    if not adds:
        assert set(after) == set(before), f"keys added: {sorted(set(after) - set(before))}"
