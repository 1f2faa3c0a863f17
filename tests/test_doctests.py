"""The numpydoc ``Examples`` of every public name run as doctests.

The names are collected from the subpackages' ``__all__`` (plus the CLI's ``main`` and
``build_parser``), with the methods each public class defines itself, so an Examples section
added to any of them later is run without changing this file. Examples that read the Baron
data skip without ``$SCETM_MNN_DATA``; the scib-metrics one skips without the ``bench``
extra.
"""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import inspect
import os

import matplotlib
import pytest

matplotlib.use("Agg")

import matplotlib.pyplot as plt

SUBPACKAGES = ("datasets", "pp", "model", "module", "train", "tl", "pl")
OPTIONS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE

#: Public functions and classes whose docstrings still lack an Examples section. They live
#: in files whose owners add them; :func:`test_missing_examples_list_is_current` keeps
#: this list from going stale, so delete a name once its Examples exist.
MISSING_EXAMPLES: set[str] = set()

#: Examples that do not pass yet, in files whose owners fix them. Strict xfail: once one
#: passes, its test fails until the name is removed here.
PENDING_FIXES: dict[str, str] = {}


def public_objects() -> dict[str, object]:
    """``"sub.name"`` → object for every public name of the package, and the CLI's."""
    objects = {}
    for sub in SUBPACKAGES:
        module = importlib.import_module(f"scetm_mnn.{sub}")
        for name in module.__all__:
            objects[f"{sub}.{name}"] = getattr(module, name)
    cli = importlib.import_module("scetm_mnn.cli")
    objects["cli.main"] = cli.main
    objects["cli.build_parser"] = cli.build_parser
    return objects


def _doctests() -> list[doctest.DocTest]:
    finder = doctest.DocTestFinder(exclude_empty=True)
    tests, seen = [], set()
    for name, obj in public_objects().items():
        if not (inspect.isfunction(obj) or inspect.isclass(obj)):
            continue  # constants carry no Examples
        # recurse=True also finds the docstrings of the methods the class defines itself.
        for test in finder.find(obj, name=f"scetm_mnn.{name}", module=inspect.getmodule(obj)):
            # The docstring is part of the key: methods wrapped by a decorator (e.g.
            # torch.inference_mode) all report the wrapper's line number.
            key = (test.filename, test.lineno, test.docstring)
            if test.examples and key not in seen:
                seen.add(key)
                tests.append(test)
    return sorted(tests, key=lambda t: t.name)


DOCTESTS = _doctests()
PARAMS = [
    pytest.param(
        t,
        id=t.name,
        marks=[pytest.mark.xfail(reason=PENDING_FIXES[t.name], strict=True)]
        if t.name in PENDING_FIXES
        else [],
    )
    for t in DOCTESTS
]


@pytest.mark.parametrize("test", PARAMS)
def test_docstring_examples(test, tmp_path, monkeypatch):
    source = "".join(example.source for example in test.examples)
    reads_data = ("baron_pancreas(", "pancreas_markers(", "load_orthologs(")
    if any(call in source for call in reads_data) and not os.environ.get("SCETM_MNN_DATA"):
        pytest.skip("this example reads the Baron data; set SCETM_MNN_DATA")
    if "scib_benchmark(" in source and importlib.util.find_spec("scib_metrics") is None:
        pytest.skip('this example needs scib-metrics (pip install "scetm-mnn[bench]")')
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    test.globs = dict(test.globs)  # the module's namespace, as doctest gives it; fresh per test
    runner = doctest.DocTestRunner(optionflags=OPTIONS)
    report = []
    try:
        result = runner.run(test, out=report.append)
    finally:
        plt.close("all")
    assert result.failed == 0, "".join(report)


def test_doctests_are_collected():
    names = {t.name for t in DOCTESTS}
    for owned in (
        "scetm_mnn.tl.leiden_sweep",
        "scetm_mnn.tl.integration_metrics",
        "scetm_mnn.pl.topic_heatmap",
        "scetm_mnn.datasets.baron_pancreas",
        "scetm_mnn.cli.main",
    ):
        assert owned in names


def _has_examples(obj) -> bool:
    return "\nExamples\n--------" in (inspect.getdoc(obj) or "")


def test_public_functions_and_classes_have_examples():
    lacking = {
        name
        for name, obj in public_objects().items()
        if (inspect.isfunction(obj) or inspect.isclass(obj)) and not _has_examples(obj)
    }
    assert lacking <= MISSING_EXAMPLES, (
        f"no Examples section: {sorted(lacking - MISSING_EXAMPLES)}"
    )


def test_missing_examples_list_is_current():
    objects = public_objects()
    stale = {name for name in MISSING_EXAMPLES if name not in objects}
    done = {name for name in MISSING_EXAMPLES - stale if _has_examples(objects[name])}
    assert not stale, f"not public names (remove them from MISSING_EXAMPLES): {sorted(stale)}"
    assert not done, f"these have Examples now; remove them from MISSING_EXAMPLES: {sorted(done)}"
