"""The one docstring filler: shared texts land indented, and no placeholder is left behind."""

import inspect
import re

import pytest

import scetm_mnn
from scetm_mnn._docstrings import EXAMPLES, fill_docstring

PLACEHOLDER = re.compile(r"^\s*%\(\w+\)s\s*$", re.M)


def _public_objects():
    for module_name in ("datasets", "pp", "model", "train", "tl", "pl"):
        module = getattr(scetm_mnn, module_name)
        for name in module.__all__:
            obj = getattr(module, name)
            yield f"{module_name}.{name}", obj
            if inspect.isclass(obj):
                for attr in vars(obj):
                    if not attr.startswith("_") or attr == "__init__":
                        yield f"{module_name}.{name}.{attr}", getattr(obj, attr)


def test_fill_indents_the_text_as_the_placeholder_line():
    @fill_docstring({"part": "first\n    second"})
    def fn():
        """Summary.

        %(part)s
        """

    assert "\n        first\n            second\n" in fn.__doc__


def test_an_unknown_name_fails_when_the_docstring_is_filled():
    with pytest.raises(KeyError, match="nope"):

        @fill_docstring(EXAMPLES)
        def fn():
            """%(nope)s"""


def test_no_public_docstring_keeps_a_placeholder():
    left = [
        name
        for name, obj in _public_objects()
        if PLACEHOLDER.search(inspect.getdoc(obj) or "") is not None
    ]
    assert left == []
