"""The public API, pinned: every public name of the package's modules and its signature.

The snapshot ``tests/data/api_surface.json`` lists, for each public module, every name in
its ``__all__``: a callable's ``inspect.signature`` (a class's, and those of the public
methods, properties and attributes that the package itself defines on it), a constant's
``repr`` or another object's type. A refactor must leave it exactly as it is; a change of
the API is made on purpose, by regenerating the snapshot and committing it with the
change::

    python tests/test_api_surface.py --update

(or ``SCETM_MNN_UPDATE_API=1 pytest tests/test_api_surface.py``).
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import sys
from pathlib import Path

SNAPSHOT = Path(__file__).parent / "data" / "api_surface.json"
MODULES = (
    "scetm_mnn",
    "scetm_mnn.pp",
    "scetm_mnn.tl",
    "scetm_mnn.pl",
    "scetm_mnn.model",
    "scetm_mnn.module",
    "scetm_mnn.train",
    "scetm_mnn.datasets",
)
_CONSTANTS = (bool, int, float, str, tuple, list, dict, frozenset, type(None))


def _signature(obj) -> str | None:
    try:
        return str(inspect.signature(obj))
    except (TypeError, ValueError):  # builtins and the like
        return None


def _ours(cls: type, name: str) -> tuple[type, object] | None:
    """The class of ``cls``'s MRO that defines ``name``, if the package defines it."""
    for klass in cls.__mro__:
        if name in vars(klass):
            if klass.__module__.split(".")[0] == "scetm_mnn":
                return klass, vars(klass)[name]
            return None
    return None


def _member(cls: type, name: str, raw) -> str:
    if isinstance(raw, property):
        return "property"
    if isinstance(raw, staticmethod):
        return f"staticmethod{_signature(getattr(cls, name))}"
    if isinstance(raw, classmethod):
        return f"classmethod{_signature(getattr(cls, name))}"
    if inspect.isfunction(raw):
        return f"method{_signature(raw)}"
    return _value(raw)


def _value(obj) -> str:
    if isinstance(obj, _CONSTANTS):
        return f"= {obj!r}"
    return f"<{type(obj).__module__}.{type(obj).__qualname__}>"


def _describe(obj):
    if inspect.ismodule(obj):
        return f"module {obj.__name__}"
    if inspect.isclass(obj):
        members = {}
        for name in sorted(dir(obj)):
            if name.startswith("_"):
                continue
            found = _ours(obj, name)
            if found is not None:
                members[name] = _member(obj, name, found[1])
        return {"class": _signature(obj), "members": members}
    if callable(obj):
        return f"{type(obj).__name__}{_signature(obj)}"
    return _value(obj)


def api_surface() -> dict[str, dict]:
    """``{module: {public name: description}}`` for every module of ``MODULES``."""
    surface = {}
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        names = getattr(module, "__all__", None)
        if names is None:
            names = [n for n in vars(module) if not n.startswith("_")]
        surface[module_name] = {n: _describe(getattr(module, n)) for n in sorted(names)}
    return surface


def write_snapshot() -> None:
    """Regenerate ``tests/data/api_surface.json`` from the installed package."""
    SNAPSHOT.parent.mkdir(parents=True, exist_ok=True)
    SNAPSHOT.write_text(json.dumps(api_surface(), indent=1, sort_keys=True) + "\n")


def _differences(expected: dict, got: dict, where: str = "") -> list[str]:
    lines = []
    for key in sorted(set(expected) | set(got)):
        name = f"{where}.{key}" if where else key
        if key not in got:
            lines.append(f"removed: {name}")
        elif key not in expected:
            lines.append(f"added: {name} {got[key]}")
        elif isinstance(expected[key], dict) and isinstance(got[key], dict):
            lines.extend(_differences(expected[key], got[key], name))
        elif expected[key] != got[key]:
            lines.append(f"changed: {name}\n  was {expected[key]}\n  now {got[key]}")
    return lines


def test_public_api_matches_the_snapshot():
    if os.environ.get("SCETM_MNN_UPDATE_API"):
        write_snapshot()
    expected = json.loads(SNAPSHOT.read_text())
    differences = _differences(expected, api_surface())
    assert not differences, (
        "The public API differs from tests/data/api_surface.json. If the change is meant, "
        "regenerate it (python tests/test_api_surface.py --update) and commit it:\n"
        + "\n".join(differences)
    )


if __name__ == "__main__":
    if sys.argv[1:] != ["--update"]:
        sys.exit(f"usage: python {sys.argv[0]} --update   (rewrites {SNAPSHOT})")
    write_snapshot()
    print(f"wrote {SNAPSHOT}")
