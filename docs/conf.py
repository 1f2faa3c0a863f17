"""Sphinx configuration of the scetm-mnn documentation.

Build with ``make docs`` (warnings are errors, every cross-reference must resolve, the
tutorials are executed). While editing, skip the tutorials' execution with
``NB_EXECUTION_MODE=off make docs``, or some of them with
``NB_EXECUTION_EXCLUDE="*pancreas*" make docs`` (comma-separated glob patterns).

References to other projects (python, numpy, scipy, pandas, anndata, scanpy, scvi-tools,
torch) resolve through intersphinx when the build can reach their sites. Offline (CI and
the development machines have no internet) they cannot, so ``nitpick_ignore_regex`` lets
those names through, one pattern per project with its reason; our own names must always
resolve. ``SCETM_MNN_DOCS_OFFLINE=1`` forces the offline build, ``=0`` the online one;
unset, the build probes the network once.
"""

from __future__ import annotations

import os
import socket
import sys
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
# sphinx-autodoc-typehints calls an API that Sphinx 10 removes; not our concern here.
warnings.filterwarnings("ignore", message=r".*set_application.* is deprecated")
sys.path.insert(0, str(HERE.parent / "src"))

import scetm_mnn  # noqa: E402 - from src/, put on the path above; autodoc imports it anyway

project = "scetm-mnn"
author = "scetm-mnn developers"
copyright = "2026, scetm-mnn developers"
release = scetm_mnn.__version__  # the one place the version is written
version = release

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "sphinx.ext.intersphinx",
    "sphinx_autodoc_typehints",
]

source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints"]
templates_path = ["_templates"]

# -- API reference -------------------------------------------------------------------------
autosummary_generate = True
autosummary_imported_members = False
autodoc_default_options = {"members": True, "member-order": "bysource"}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_mock_imports: list[str] = []
napoleon_numpy_docstring = True
napoleon_google_docstring = False
napoleon_use_rtype = False
napoleon_use_param = True
typehints_document_rtype = False
always_document_param_types = False

# -- Cross-references: every one must resolve ---------------------------------------------
nitpicky = True


def _online() -> bool:
    """Whether intersphinx can fetch inventories (``SCETM_MNN_DOCS_OFFLINE`` overrides)."""
    forced = os.environ.get("SCETM_MNN_DOCS_OFFLINE")
    if forced is not None:
        return forced.strip().lower() in ("0", "false", "no", "")
    try:
        socket.create_connection(("docs.python.org", 443), timeout=2).close()
    except OSError:
        return False
    return True


OFFLINE = not _online()
INTERSPHINX = {
    "python": ("https://docs.python.org/3", None),
    "numpy": ("https://numpy.org/doc/stable", None),
    "scipy": ("https://docs.scipy.org/doc/scipy", None),
    "pandas": ("https://pandas.pydata.org/docs", None),
    "anndata": ("https://anndata.readthedocs.io/en/stable", None),
    "scanpy": ("https://scanpy.readthedocs.io/en/stable", None),
    "scvi-tools": ("https://docs.scvi-tools.org/en/stable", None),
    "torch": ("https://docs.pytorch.org/docs/stable", None),
}
intersphinx_mapping = {} if OFFLINE else INTERSPHINX

# (role, pattern, reason) for the names that may stay unresolved. The reason is part of
# the entry: tests/test_docs.py checks that each has one.
_EXTERNAL = (
    r"(anndata|ad|scanpy|sc|scvi|numpy|np|pandas|pd|scipy|torch|typing|collections"
    r"|os|pathlib|argparse|subprocess|builtins)(\..*)?"
)
NITPICK_IGNORE = [
    (
        r"py:.*",
        _EXTERNAL,
        "offline only: the projects with an intersphinx inventory (see INTERSPHINX) "
        "cannot be reached, so their names cannot resolve",
    ),
    (
        r"py:(class|obj)",
        r"(AnnData|DataFrame|Series|Figure|Axes|Tensor|Module|ndarray|spmatrix|Path"
        r"|PathLike|Literal|Sequence|Mapping|Iterator|Callable|ArgumentParser|Namespace"
        r"|np\.number|np\.floating)",
        "offline only: short names that sphinx-autodoc-typehints writes for annotations "
        "of the projects above",
    ),
]
NITPICK_IGNORE_ALWAYS = [
    (
        r"py:.*",
        r"(matplotlib|lightning|sklearn|scib_metrics|pynndescent|pooch|sparse)(\..*)?",
        "no intersphinx inventory is configured for these projects (matplotlib, "
        "lightning, scikit-learn, scib-metrics, pynndescent, pooch, pydata sparse)",
    ),
    (
        r"py:class",
        r"(scvi\.model\.base\.(BaseModelClass|UnsupervisedTrainingMixin)"
        r"|scvi\.module\.base\.BaseModuleClass|scvi\.train\.TrainingPlan)",
        "scvi-tools' base classes, shown as our classes' bases, are not in its inventory",
    ),
    (
        r"py:class",
        r"(optional|default.*|array-like|sparse matrix|path-like)",
        "numpydoc type phrases, not names",
    ),
]
nitpick_ignore_regex = [
    (role, pattern)
    for role, pattern, _ in NITPICK_IGNORE_ALWAYS + (NITPICK_IGNORE if OFFLINE else [])
]

# -- MyST and notebooks --------------------------------------------------------------------
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3
nb_execution_mode = os.environ.get("NB_EXECUTION_MODE", "cache")
nb_execution_timeout = int(os.environ.get("NB_EXECUTION_TIMEOUT", "1800"))
nb_execution_excludepatterns = [
    p for p in os.environ.get("NB_EXECUTION_EXCLUDE", "").split(",") if p
]
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_execution_cache_path = str(HERE / "_build" / ".jupyter_cache")
nb_merge_streams = True

# -- HTML ----------------------------------------------------------------------------------
html_theme = "sphinx_book_theme"
html_title = f"scetm-mnn {release}"
html_static_path = ["_static"]
html_theme_options = {
    "repository_url": "https://github.com/scetm-mnn/scetm-mnn",
    "use_repository_button": True,
    "path_to_docs": "docs",
    "show_toc_level": 2,
}
