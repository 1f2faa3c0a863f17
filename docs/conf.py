"""Sphinx configuration of the scetm-mnn documentation.

Build with ``make docs`` (warnings are errors, tutorials executed). While editing, skip
the tutorials' execution with ``NB_EXECUTION_MODE=off make docs``, or some of them with
``NB_EXECUTION_EXCLUDE="*pancreas*" make docs`` (comma-separated glob patterns).
"""

from __future__ import annotations

import os
import sys
import warnings
from importlib.metadata import version as _version
from pathlib import Path

HERE = Path(__file__).resolve().parent
# sphinx-autodoc-typehints calls an API that Sphinx 10 removes; not our concern here.
warnings.filterwarnings("ignore", message=r".*set_application.* is deprecated")
sys.path.insert(0, str(HERE.parent / "src"))

project = "scetm-mnn"
author = "scetm-mnn developers"
copyright = "2026, scetm-mnn developers"
release = _version("scetm-mnn")
version = release

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
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


# -- CLI reference: the argparse help, written at build time -------------------------------
def _write_cli_help(out: Path) -> None:
    """Write ``scetm-mnn --help`` and each subcommand's help to ``out/<name>.txt``."""
    import argparse

    from scetm_mnn.cli import build_parser

    os.environ["COLUMNS"] = "92"  # argparse wraps to the terminal width
    out.mkdir(parents=True, exist_ok=True)
    parser = build_parser()
    texts = {"scetm-mnn": parser.format_help()}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                texts[name] = sub.format_help()
    for name, text in texts.items():
        path = out / f"{name}.txt"
        if not path.exists() or path.read_text() != text:
            path.write_text(text)


_write_cli_help(HERE / "generated" / "cli")
