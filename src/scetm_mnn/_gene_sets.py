"""Gene sets: GMT files, a mapping of set name → genes, and the sets in a gene universe.

A GMT file (the format of MSigDB and Enrichr) holds one gene set per line: its name, a
description, then its genes, all separated by tabs. Topic annotation
(:func:`scetm_mnn.tl.annotate_topics`) and guided topics (``BatchCorrectedSCETM(...,
gene_sets=...)``) read their sets here, so both take the same files and warn alike.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import sparse

GeneSets = str | os.PathLike | Mapping[str, Iterable[str]]
"""A GMT file's path, or a mapping of set name → genes."""


def read_gmt(path: str | os.PathLike) -> dict[str, list[str]]:
    """Read the gene sets of a GMT file.

    Each non-blank line is ``name<TAB>description<TAB>gene<TAB>gene...``. Genes are kept in
    the file's order with repeats and blank fields dropped; a set without genes is kept as
    an empty list (:func:`annotate_topics` skips it with a warning).

    Parameters
    ----------
    path
        The file.

    Returns
    -------
    Set name → genes, in the file's order.

    Raises
    ------
    FileNotFoundError
        When there is no such file.
    ValueError
        When the file is not GMT text (binary, or a line without a tab), a line has no set
        name, two sets share a name, or the file holds no set.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> import scetm_mnn as sm
    >>> path = Path(tempfile.mkdtemp()) / "cells.gmt"
    >>> sm.tl.write_gmt({"beta": ["INS", "IAPP"], "alpha": ["GCG"]}, path)
    >>> sm.tl.read_gmt(path)
    {'beta': ['INS', 'IAPP'], 'alpha': ['GCG']}
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No GMT file {str(path)!r}.")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{str(path)!r} is not a GMT file: it is not UTF-8 text. A GMT file has one gene "
            "set per line: name<TAB>description<TAB>gene<TAB>gene..."
        ) from err
    sets: dict[str, list[str]] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2:
            raise ValueError(
                f"{str(path)!r} is not a GMT file: line {number} has no tab ({line[:60]!r}). "
                "A GMT line is name<TAB>description<TAB>gene<TAB>gene..."
            )
        name = fields[0].strip()
        if not name:
            raise ValueError(f"{str(path)!r}, line {number}: the gene set has no name.")
        if name in sets:
            raise ValueError(
                f"{str(path)!r}, line {number}: the gene set name {name!r} is used twice; "
                "give every set its own name."
            )
        sets[name] = list(dict.fromkeys(g.strip() for g in fields[2:] if g.strip()))
    if not sets:
        raise ValueError(f"{str(path)!r} holds no gene set.")
    return sets


def write_gmt(
    gene_sets: Mapping[str, Iterable[str]],
    path: str | os.PathLike,
    descriptions: Mapping[str, str] | None = None,
) -> None:
    r"""Write gene sets as a GMT file (one line per set).

    Parameters
    ----------
    gene_sets
        Set name → genes.
    path
        The file to write.
    descriptions
        Set name → description (the second field); default empty.

    Raises
    ------
    ValueError
        When a name, gene or description holds a tab or a line break.

    Examples
    --------
    >>> import os
    >>> import tempfile
    >>> import scetm_mnn as sm
    >>> path = os.path.join(tempfile.mkdtemp(), "beta.gmt")
    >>> sm.tl.write_gmt({"beta": ["INS", "IAPP"]}, path, descriptions={"beta": "islet"})
    >>> from pathlib import Path
    >>> Path(path).read_text()
    'beta\tislet\tINS\tIAPP\n'
    """
    descriptions = descriptions or {}
    lines = []
    for name, genes in as_gene_sets(gene_sets).items():
        fields = [name, str(descriptions.get(name, "")), *genes]
        bad = [f for f in fields if "\t" in f or "\n" in f or "\r" in f]
        if bad:
            raise ValueError(f"Gene set {name!r}: {bad[0]!r} holds a tab or a line break.")
        lines.append("\t".join(fields) + "\n")
    Path(path).write_text("".join(lines), encoding="utf-8")


def as_gene_sets(gene_sets: GeneSets) -> dict[str, list[str]]:
    """``gene_sets`` (a GMT path or a mapping) as set name → genes (strings, no repeats)."""
    if isinstance(gene_sets, str | os.PathLike):
        return read_gmt(gene_sets)
    if not isinstance(gene_sets, Mapping):
        raise TypeError(
            "gene_sets must be a GMT file's path or a mapping of set name → genes, not "
            f"{type(gene_sets).__name__}."
        )
    sets = {}
    for name, genes in gene_sets.items():
        if isinstance(genes, str):
            raise TypeError(
                f"gene_sets[{name!r}] is a string; give its genes as a list, e.g. ['INS']."
            )
        sets[str(name)] = list(dict.fromkeys(map(str, genes)))
    if not sets:
        raise ValueError("gene_sets is empty; give at least one gene set.")
    return sets


def membership(
    sets: Mapping[str, list[str]], genes: pd.Index, where: str, stacklevel: int = 2
) -> tuple[list[str], sparse.csc_array]:
    """The sets with genes among ``genes``, and their genes × sets 0/1 matrix.

    Genes outside ``genes`` are dropped, and sets left empty (or empty to begin with) are
    skipped, each with a :class:`UserWarning` that counts them; ``where`` names the
    universe in the messages (e.g. ``"the topics"``), and ``stacklevel`` is the warnings'
    (2: the caller of ``membership``).

    Raises
    ------
    ValueError
        When no set has a gene among ``genes``.
    """
    position = dict(zip(genes, range(len(genes))))
    empty = [name for name, members in sets.items() if not members]
    n_genes = sum(len(members) for members in sets.values())
    unknown = sum(g not in position for members in sets.values() for g in members)
    if unknown:
        warnings.warn(
            f"{unknown} of the {n_genes} genes of the gene sets are not among the "
            f"{len(genes)} genes of {where} and are dropped (names match exactly).",
            UserWarning,
            stacklevel=stacklevel,
        )
    names, rows, cols = [], [], []
    for name, members in sets.items():
        found = np.fromiter((position[g] for g in members if g in position), np.int64)
        if found.size:
            rows.append(found)
            cols.append(np.full(found.size, len(names)))
            names.append(name)
    lost = [n for n in sets if n not in set(names) and n not in set(empty)]
    for what, which in (("are empty", empty), (f"have none of their genes in {where}", lost)):
        if which:
            shown = ", ".join(map(repr, which[:5])) + (" ..." if len(which) > 5 else "")
            warnings.warn(
                f"{len(which)} gene sets {what} and are skipped: {shown}.",
                UserWarning,
                stacklevel=stacklevel,
            )
    if not names:
        raise ValueError(f"No gene set has a gene among the {len(genes)} genes of {where}.")
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    matrix = sparse.csc_array((np.ones(rows.size), (rows, cols)), shape=(len(genes), len(names)))
    return names, matrix
