"""The release metadata agree: one version everywhere, the license, the changelog, py.typed."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import scetm_mnn

ROOT = Path(__file__).resolve().parents[1]


def test_version_is_written_once_and_read_by_the_build():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in pyproject["project"]
    assert pyproject["project"]["dynamic"] == ["version"]
    assert pyproject["tool"]["hatch"]["version"]["path"] == "src/scetm_mnn/__init__.py"
    init = (ROOT / "src" / "scetm_mnn" / "__init__.py").read_text()
    assert re.findall(r'^__version__ = "(.+)"$', init, re.MULTILINE) == [scetm_mnn.__version__]
    citation = (ROOT / "CITATION.cff").read_text()
    assert re.search(r"^version: (.+)$", citation, re.MULTILINE).group(1) == (
        scetm_mnn.__version__
    )


def test_changelog_has_the_current_version_and_keeps_its_format():
    text = (ROOT / "CHANGELOG.md").read_text()
    assert "## [Unreleased]" in text
    assert f"## [{scetm_mnn.__version__}] - " in text
    for header in re.findall(r"^## \[([^\]]+)\]", text, re.MULTILINE):
        assert f"[{header}]: https://" in text, f"no link for [{header}]"


def test_license_py_typed_and_scvi_pin():
    assert (ROOT / "LICENSE").read_text().startswith("BSD 3-Clause License")
    assert (ROOT / "src" / "scetm_mnn" / "py.typed").is_file()
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["license"] == "BSD-3-Clause"
    assert "scvi-tools>=1.4,<1.5" in pyproject["project"]["dependencies"]
    assert {"build>=1", "twine>=5"} <= set(pyproject["project"]["optional-dependencies"]["dev"])
