"""Baron et al. (2016) pancreas data (GEO GSE84133): human donors and mouse."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Literal

import anndata as ad
import numpy as np
import pandas as pd
import pooch
from scipy import sparse

from .._atomic import atomic_path

logger = logging.getLogger(__name__)

DATA_ENV = "SCETM_MNN_DATA"
GEO_URL = "https://ftp.ncbi.nlm.nih.gov/geo/series/GSE84nnn/GSE84133/suppl/GSE84133_RAW.tar"
_GEO_TAR = "GSE84133_RAW.tar"
_BATCH_COLUMNS = ("donor", "batch")
_LABEL_COLUMNS = ("cell_type1", "assigned_cluster", "cell_type")
_META_COLUMNS = ("barcode", "assigned_cluster")
_SUBDIRS = ("baron_pancreas", ".", "GSE84133_RAW")
_CHUNKSIZE = 256
DONOR_CELLS = {
    "human": {"human1": 1937, "human2": 1724, "human3": 3605, "human4": 1303},
    "mouse": {"mouse1": 822, "mouse2": 1064},
}
"""Cells per donor in the GEO release, in GEO's order."""
N_CELLS = {species: sum(donors.values()) for species, donors in DONOR_CELLS.items()}
"""Cells in the GEO release: 8,569 human, 1,886 mouse."""


def _is_draw(adata: ad.AnnData, species: str, positions: np.ndarray) -> bool:
    """Whether a local subsample holds exactly the cells at ``positions`` of the release.

    Its cells must sort (by name, i.e. in GEO's order) as the positions do, and each donor
    must hold as many cells as the positions that fall in that donor's block.
    """
    names = np.asarray(adata.obs_names.astype(str))
    if adata.n_obs != positions.size or not np.array_equal(
        np.argsort(names, kind="stable"), np.argsort(positions, kind="stable")
    ):
        return False
    edges = np.cumsum([0, *DONOR_CELLS[species].values()])
    expected = np.histogram(positions, bins=edges)[0]
    found = adata.obs["batch"].astype(str).value_counts()
    return all(
        int(found.get(donor, 0)) == int(n) for donor, n in zip(DONOR_CELLS[species], expected)
    )


def _search_dirs(data_dir: str | os.PathLike | None) -> list[Path]:
    dirs = [Path(data_dir)] if data_dir is not None else []
    if os.environ.get(DATA_ENV):
        dirs.append(Path(os.environ[DATA_ENV]))
    return dirs


def _cache_dir() -> Path:
    """Where downloads and parsed copies live (``pooch.os_cache("scetm-mnn")``)."""
    return Path(pooch.os_cache("scetm-mnn"))


def _find_h5ad(species: str, directory: Path) -> Path | None:
    for sub in _SUBDIRS:
        hits = sorted((directory / sub).glob(f"baron_{species}*.h5ad"))
        if hits:
            return hits[0]
    return None


def _csv_donor(path: Path, species: str) -> str | None:
    """Return the donor (``human1``, ``mouse2``, ...) in a GEO file name, or ``None``."""
    match = re.fullmatch(rf"GSM\d+_({species}\d+)_umifm_counts\.csv(\.gz)?", path.name)
    return match.group(1) if match else None


def _find_csvs(species: str, directory: Path) -> list[Path]:
    for sub in _SUBDIRS:
        hits = sorted(p for p in (directory / sub).glob("GSM*") if _csv_donor(p, species))
        if hits:
            return hits
    return []


def _read_umifm_csv(path: str | os.PathLike, donor: str, chunksize: int = _CHUNKSIZE):
    """Parse one GEO ``*_umifm_counts.csv(.gz)`` file into an AnnData with CSR counts.

    The file has cells as rows; the columns are an unnamed cell index (optional),
    ``barcode``, ``assigned_cluster`` and then one column per gene. It is read in chunks
    of ``chunksize`` cells, each turned sparse at once, so memory stays small.
    """
    header = pd.read_csv(path, nrows=0).columns
    has_index = header[0] == "" or str(header[0]).startswith("Unnamed")
    if "assigned_cluster" not in header:
        raise ValueError(
            f"{path} has no 'assigned_cluster' column; expected the GEO GSE84133 "
            "*_umifm_counts.csv format (index, barcode, assigned_cluster, genes...)."
        )
    columns = header[1:] if has_index else header
    genes = [c for c in columns if c not in _META_COLUMNS]
    blocks, metas = [], []
    reader = pd.read_csv(path, index_col=0 if has_index else None, chunksize=chunksize)
    for chunk in reader:
        blocks.append(sparse.csr_matrix(chunk[genes].to_numpy(dtype=np.float32)))
        metas.append(chunk[[c for c in _META_COLUMNS if c in chunk.columns]])
    meta = pd.concat(metas)
    if not has_index:
        meta.index = meta["barcode"] if "barcode" in meta else meta.index
    meta.index = [n if n.startswith(donor) else f"{donor}_{n}" for n in meta.index.astype(str)]
    meta.insert(0, "donor", donor)
    x = sparse.vstack(blocks, format="csr") if blocks else sparse.csr_matrix((0, len(genes)))
    return ad.AnnData(X=x.astype(np.float32), obs=meta, var=pd.DataFrame(index=genes))


def _read_csvs(paths: list[Path], species: str) -> ad.AnnData:
    """Parse and concatenate one GEO count file per donor."""
    parts = []
    for path in paths:
        logger.info("Parsing %s", path)
        parts.append(_read_umifm_csv(path, donor=_csv_donor(path, species)))
    adata = ad.concat(parts, join="outer", merge="same") if len(parts) > 1 else parts[0]
    if not sparse.isspmatrix_csr(adata.X):
        adata.X = sparse.csr_matrix(adata.X)
    return adata


def _download(species: str, cache: Path) -> list[Path]:
    """Download ``GSE84133_RAW.tar`` from GEO into ``cache`` and extract it."""
    try:
        files = pooch.retrieve(
            GEO_URL,
            known_hash=None,
            fname=_GEO_TAR,
            path=cache,
            processor=pooch.Untar(),
            progressbar=False,
        )
    except OSError as err:  # requests' network errors subclass OSError
        raise FileNotFoundError(
            f"No local Baron {species} data, and downloading {GEO_URL} failed "
            f"({type(err).__name__}). "
            f"Without internet, put baron_pancreas/baron_{species}*.h5ad or the GEO files "
            f"GSM22307xx_{species}<N>_umifm_counts.csv.gz in a folder and pass it as "
            f"`data_dir=` or set ${DATA_ENV} to it."
        ) from err
    return sorted(Path(f) for f in files if _csv_donor(Path(f), species))


def _standardize(adata: ad.AnnData, species: str) -> ad.AnnData:
    """Give the AnnData the package's conventions: CSR counts, ``batch``/``cell_type``."""
    batch_col = next((c for c in _BATCH_COLUMNS if c in adata.obs), None)
    label_col = next((c for c in _LABEL_COLUMNS if c in adata.obs), None)
    if batch_col is None or label_col is None:
        raise ValueError(
            f"The Baron {species} file lacks a donor or cell-type column "
            f"(obs columns: {list(adata.obs.columns)})."
        )
    adata.obs["batch"] = pd.Categorical(adata.obs[batch_col].astype(str))
    adata.obs["cell_type"] = pd.Categorical(adata.obs[label_col].astype(str))
    if not sparse.isspmatrix_csr(adata.X):
        adata.X = sparse.csr_matrix(adata.X)
    adata.var_names_make_unique()
    adata.uns["dataset"] = f"baron_{species}"
    return adata


def _load_local(species: str, dirs: list[Path]) -> ad.AnnData | None:
    """Load the first h5ad, else GEO CSV set, found in ``dirs`` (searched in order)."""
    for directory in dirs:
        path = _find_h5ad(species, directory)
        if path is not None:
            logger.info("Reading %s", path)
            return ad.read_h5ad(path)
        csvs = _find_csvs(species, directory)
        if csvs:
            return _read_csvs(csvs, species)
    return None


def _subsample_size(subsample: float | int, n_full: int) -> int:
    if isinstance(subsample, bool) or not isinstance(subsample, int | float | np.number):
        raise TypeError(
            f"subsample must be a fraction in (0, 1] or a number of cells, not {subsample!r}."
        )
    if isinstance(subsample, float | np.floating):
        if not 0.0 < subsample <= 1.0:
            raise ValueError(
                f"subsample={subsample!r}: a float is a fraction of the cells and must lie "
                "in (0, 1]; pass an int for a number of cells."
            )
        return max(1, int(subsample * n_full))
    if not 1 <= subsample <= n_full:
        raise ValueError(f"subsample={subsample!r} cells: choose between 1 and {n_full}.")
    return int(subsample)


def _draw(
    adata: ad.AnnData, species: str, subsample: float | int, random_state: int
) -> ad.AnnData:
    """The seeded subsample of ``adata`` (see :func:`baron_pancreas`), in draw order."""
    n_full = max(N_CELLS[species], adata.n_obs)
    n = _subsample_size(subsample, n_full)
    positions = np.random.RandomState(random_state).choice(n_full, size=n, replace=False)
    if adata.n_obs == n_full:
        in_geo_order = adata[np.argsort(np.asarray(adata.obs_names.astype(str)), kind="stable")]
        drawn = in_geo_order[positions].copy()
    else:
        # The local copy is itself a subsample (e.g. the shared baron_human_subset.h5ad): it
        # is returned only when it is this very draw, i.e. its cells are the drawn positions.
        if not _is_draw(adata, species, positions):
            raise ValueError(
                f"The local Baron {species} copy holds {adata.n_obs} of the {n_full} cells, "
                f"and they are not the draw subsample={subsample!r}, "
                f"random_state={random_state}. Pass the subsample and random_state it was "
                "made with (the shared baron_human_subset.h5ad is subsample=0.25, "
                "random_state=0), or point `data_dir=` at the full GEO files."
            )
        drawn = adata.copy()
    drawn.uns["subsample"] = {
        "subsample": subsample,
        "random_state": random_state,
        "n_obs": n,
        "of": n_full,
    }
    return drawn


def baron_pancreas(
    species: Literal["human", "mouse"] = "human",
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
    *,
    subsample: float | int | None = None,
    random_state: int = 0,
) -> ad.AnnData:
    """Load the Baron et al. (2016) pancreas data (GEO GSE84133) with raw counts.

    The data are searched in this order, the first hit winning:

    1. ``data_dir``, then ``$SCETM_MNN_DATA``; in each, first an h5ad
       ``baron_{species}*.h5ad``, then the GEO files
       ``GSM22307xx_{species}<N>_umifm_counts.csv.gz`` (one per donor), each looked for in
       the subfolders ``baron_pancreas/``, the folder itself and ``GSE84133_RAW/``;
    2. a parsed copy cached by an earlier download in ``pooch.os_cache("scetm-mnn")``;
    3. a download of ``GSE84133_RAW.tar`` from GEO into that cache (when ``download``),
       whose donor files are parsed and cached as ``baron_{species}.h5ad``.

    The GEO files are read in chunks of cells, so parsing them needs little memory beyond
    the sparse result.

    The GEO release holds 8,569 human and 1,886 mouse cells. A local copy may hold fewer:
    the ``baron_human_subset.h5ad`` of the project's shared data folder is a random quarter
    of the human cells (2,142), the one the README's benchmark table and the pancreas
    tutorial use. It is exactly ``subsample=0.25, random_state=0``, so
    ``baron_pancreas("human", subsample=0.25)`` gives the same cells, in the same order,
    from that file and from the full GEO download.

    Parameters
    ----------
    species
        ``"human"`` (4 donors, 14 cell types) or ``"mouse"`` (2 mice, 13 cell types).
    data_dir
        Directory to search first.
    download
        Whether to download from GEO when no local copy is found.
    subsample
        ``None`` (default): every cell of the copy found. A float in (0, 1]: that fraction
        of the release's cells (``int(fraction × n)``, n = 8,569 human or 1,886 mouse); an
        int: that many cells. The cells are drawn without replacement, seeded by
        ``random_state``, from the release in GEO's order (donor, library, cell; the cell
        names sort that way): the draw of ``scanpy.pp.subsample(adata, fraction,
        random_state=random_state)``, returned in draw order. A local copy that is itself
        a subsample is returned only when it is the requested draw; otherwise a
        ``ValueError`` asks for the full data.
    random_state
        Seed of the subsample (unused without ``subsample``).

    Returns
    -------
    AnnData with raw counts in ``X`` (CSR, float32 holding integers), categorical
    ``obs["batch"]`` (donor) and ``obs["cell_type"]`` (Baron's ``assigned_cluster``);
    with ``subsample``, ``uns["subsample"]`` records the draw.

    Raises
    ------
    FileNotFoundError
        When no local copy exists and the download is disabled or fails (for example,
        offline); the message says where to put the files.
    ValueError
        For an unknown ``species``, a ``subsample`` out of range, or a local subsample
        that is not the requested draw.

    Examples
    --------
    The human cells of the README's table (needs the data, see above):

    >>> import scetm_mnn as sm
    >>> adata = sm.datasets.baron_pancreas("human", subsample=0.25, random_state=0)
    >>> adata.n_obs, adata.obs["batch"].nunique()
    (2142, 4)
    >>> adata.obs["batch"].value_counts().sort_index().to_dict()
    {'human1': 472, 'human2': 450, 'human3': 914, 'human4': 306}
    """
    if species not in ("human", "mouse"):
        raise ValueError(f"species must be 'human' or 'mouse', not {species!r}.")
    dirs = _search_dirs(data_dir)
    adata = _load_local(species, dirs)
    if adata is None:
        cache = _cache_dir()
        cached = _find_h5ad(species, cache)
        if cached is not None:
            logger.info("Reading cached %s", cached)
            adata = ad.read_h5ad(cached)
        elif not download:
            searched = ", ".join(map(str, dirs)) or f"nothing (set ${DATA_ENV})"
            raise FileNotFoundError(
                f"No Baron {species} data found; searched {searched}. Set ${DATA_ENV} to "
                "the folder holding baron_pancreas/, or pass `download=True`."
            )
        else:
            paths = _download(species, cache)
            if not paths:
                raise FileNotFoundError(f"{_GEO_TAR} in {cache} holds no {species} files.")
            adata = _read_csvs(paths, species)
            with atomic_path(cache / f"baron_{species}.h5ad") as temporary:
                adata.write_h5ad(temporary, compression="gzip")
    adata = _standardize(adata, species)
    if adata.n_obs < N_CELLS[species]:
        logger.info(
            "This Baron %s copy holds %d of the %d cells of the GEO release (a subsample).",
            species,
            adata.n_obs,
            N_CELLS[species],
        )
    if subsample is None:
        return adata
    return _draw(adata, species, subsample, random_state)
