"""Known marker genes of the pancreas cell types, for checking what topics mean."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pandas as pd

from ._baron import DATA_ENV, _search_dirs

logger = logging.getLogger(__name__)

MARKERS_FILE = "pancreas_markers.tsv"
_SUBDIRS = ("baron_pancreas", ".")
_COLUMNS = ("species", "cell_type", "markers")


def _find_markers_file(data_dir: str | os.PathLike | None) -> Path:
    dirs = _search_dirs(data_dir)
    if not dirs:
        raise FileNotFoundError(
            f"No data folder given: pass `data_dir=` or set ${DATA_ENV} to the folder "
            f"holding baron_pancreas/{MARKERS_FILE}."
        )
    candidates = [directory / sub / MARKERS_FILE for directory in dirs for sub in _SUBDIRS]
    for path in candidates:
        if path.is_file():
            return path
    searched = ", ".join(str(p) for p in candidates)
    raise FileNotFoundError(
        f"{MARKERS_FILE} not found; looked for {searched}. Put it in baron_pancreas/ under "
        f"the folder passed as `data_dir=` or set in ${DATA_ENV}."
    )


def pancreas_markers(
    species: str, data_dir: str | os.PathLike | None = None
) -> dict[str, list[str]]:
    """Read the marker genes of the Baron pancreas cell types.

    The table ``pancreas_markers.tsv`` (tab-separated columns ``species``, ``cell_type``,
    ``markers``, the markers space-separated) is searched like the Baron data: in
    ``data_dir``, then ``$SCETM_MNN_DATA``, each first in ``baron_pancreas/`` and then in the
    folder itself. Cell-type names are those of
    ``baron_pancreas(species).obs["cell_type"]`` (e.g. ``"activated_stellate"``); gene
    symbols follow the species' convention (``INS`` in human, ``Ins1`` in mouse).

    Parameters
    ----------
    species
        ``"human"`` or ``"mouse"`` (any species listed in the file).
    data_dir
        Folder to search first.

    Returns
    -------
    Cell type → marker genes, in the file's order.

    Raises
    ------
    FileNotFoundError
        When neither ``data_dir`` nor ``$SCETM_MNN_DATA`` is given, or the file is in
        neither.
    ValueError
        When the file lacks the expected columns, or lists no markers for ``species``.

    Examples
    --------
    With ``$SCETM_MNN_DATA`` pointing at the folder that holds ``baron_pancreas/``:

    >>> import scetm_mnn as sm
    >>> markers = sm.datasets.pancreas_markers("human")
    >>> markers["beta"][:2]
    ['INS', 'IAPP']
    >>> sm.datasets.pancreas_markers("mouse")["beta"][:2]
    ['Ins1', 'Ins2']
    """
    path = _find_markers_file(data_dir)
    logger.info("Reading %s", path)
    table = pd.read_csv(path, sep="\t", dtype=str, comment="#")
    missing = [c for c in _COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(
            f"{path} lacks the columns {missing}; expected tab-separated columns "
            f"{list(_COLUMNS)}, with space-separated markers."
        )
    table = table.dropna(subset=list(_COLUMNS))
    species_names = table["species"].str.strip()
    rows = table[species_names == species]
    if rows.empty:
        known = sorted(species_names.unique())
        raise ValueError(f"No markers for species={species!r} in {path}; it lists {known}.")
    markers: dict[str, list[str]] = {}
    for cell_type, genes in zip(rows["cell_type"].str.strip(), rows["markers"]):
        markers.setdefault(cell_type, [])
        markers[cell_type] += [g for g in genes.split() if g not in markers[cell_type]]
    return markers
