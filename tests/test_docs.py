"""The README and the docs say what the code does.

- Every ``sm.…`` name used in a Python code block of the README, the docs pages or the
  tutorials exists and accepts the arguments passed to it; so do the methods called on an
  object that a block made with ``sm.…`` (``model = sm.model.BatchCorrectedSCETM(adata)``,
  then ``model.train(...)``).
- Every ``scetm-mnn ...`` command in a shell block parses.
- The API reference lists every public name and nothing private.
- ``docs/cli.md`` holds the parser's current help texts.
- One embedding key, the CLI's, everywhere.
- ``docs/conf.py`` is nitpicky, has an offline switch, and a reason for every ignore.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import re
import runpy
import shlex
import sys
from pathlib import Path

import pytest

import scetm_mnn
from scetm_mnn import _pipeline
from scetm_mnn.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(
    [
        ROOT / "README.md",
        ROOT / "CONTRIBUTING.md",
        *DOCS.glob("*.md"),
        *ROOT.glob("tutorials/*.md"),
    ]
)
SUBPACKAGES = ("datasets", "pp", "model", "module", "train", "tl", "pl")

_FENCE = re.compile(r"^```(?P<info>[^\n]*)\n(?P<body>.*?)^```\s*$", re.M | re.S)


def code_blocks(path: Path, kinds: tuple[str, ...]) -> list[tuple[int, str]]:
    """``(line, source)`` of the fenced blocks of ``path`` whose info string is in ``kinds``."""
    text = path.read_text()
    blocks = []
    for match in _FENCE.finditer(text):
        info = match.group("info").strip()
        if info in kinds:
            body = match.group("body")
            # MyST code-cell options (":tags: [...]") open the cell.
            lines = body.splitlines()
            while lines and lines[0].startswith(":"):
                lines.pop(0)
            blocks.append((text.count("\n", 0, match.start()) + 1, "\n".join(lines) + "\n"))
    return blocks


PYTHON_KINDS = ("python", "{code-cell} ipython3")


def _dotted(node: ast.AST) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def _resolve(dotted: str):
    obj = scetm_mnn
    for part in dotted.split(".")[1:]:  # drop "sm"
        if not hasattr(obj, part):
            raise AssertionError(f"{dotted}: scetm_mnn has no {part!r} there")
        obj = getattr(obj, part)
    return obj


def _check_call(obj, call: ast.Call, where: str, bound: bool = False) -> None:
    """Bind the call's arguments to ``obj``'s signature; ``bound``: called on an instance."""
    if any(isinstance(a, ast.Starred) for a in call.args) or any(
        k.arg is None for k in call.keywords
    ):
        return  # *args / **kwargs: nothing to bind against
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return
    args = [object()] * (len(call.args) + bound)
    kwargs = {k.arg: object() for k in call.keywords}
    try:
        signature.bind(*args, **kwargs)
    except TypeError as err:
        raise AssertionError(
            f"{where}: {ast.unparse(call)} does not fit {signature}: {err}"
        ) from None


def check_source(source: str, where: str, types: dict[str, type]) -> int:
    """Check the ``sm.…`` uses of ``source``; ``types`` maps names to the classes assigned."""
    tree = ast.parse(source)
    checked = 0
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
            dotted = _dotted(node.value.func)
            if dotted and dotted.startswith("sm."):
                obj = _resolve(dotted)
                for target in node.targets:
                    if isinstance(target, ast.Name):
                        if inspect.isclass(obj):
                            types[target.id] = obj
                        else:
                            types.pop(target.id, None)
        if isinstance(node, ast.Attribute) and not isinstance(node.ctx, ast.Store):
            dotted = _dotted(node)
            if dotted and dotted.startswith("sm."):
                try:
                    _resolve(dotted)
                except AssertionError as err:
                    raise AssertionError(f"{where}: {err}") from None
        if isinstance(node, ast.Call):
            dotted = _dotted(node.func)
            if not dotted:
                continue
            head, _, rest = dotted.partition(".")
            if head == "sm":
                try:
                    obj = _resolve(dotted)
                except AssertionError as err:
                    raise AssertionError(f"{where}: {err}") from None
                _check_call(obj, node, where)
                checked += 1
            elif head in types and rest and "." not in rest:
                cls = types[head]
                assert hasattr(cls, rest), f"{where}: {cls.__name__} has no method {rest!r}"
                raw = inspect.getattr_static(cls, rest)
                if isinstance(raw, property):
                    raise AssertionError(f"{where}: {cls.__name__}.{rest} is a property")
                if inspect.isfunction(raw):  # an instance method: self comes first
                    _check_call(raw, node, where, bound=True)
                else:  # classmethod or staticmethod
                    _check_call(getattr(cls, rest), node, where)
                checked += 1
    return checked


@pytest.mark.parametrize("path", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_code_blocks_use_existing_names_with_accepted_arguments(path):
    types: dict[str, type] = {}  # a tutorial's cells share one namespace
    for line, source in code_blocks(path, PYTHON_KINDS):
        check_source(source, f"{path.name}:{line}", types)


def test_the_checker_catches_wrong_names_and_arguments():
    types: dict[str, type] = {}
    assert check_source("sm.tl.leiden_sweep(adata, 'X', 'c', 'b', resolutions=[1])", "ok", {})
    with pytest.raises(AssertionError, match="no 'nonexistent'"):
        check_source("sm.tl.nonexistent(adata)", "bad name", {})
    with pytest.raises(AssertionError, match="does not fit"):
        check_source("sm.pp.mnn_correct(adata, 'batch', min_pairs=3)", "bad kwarg", {})
    source = "model = sm.model.BatchCorrectedSCETM(adata)\nmodel.train(max_epochs=1)\n"
    assert check_source(source, "method", types) == 2
    assert types["model"] is scetm_mnn.model.BatchCorrectedSCETM
    with pytest.raises(AssertionError, match="does not fit"):
        check_source("model.get_top_genes(10, top=3)", "bad method kwarg", types)


def test_the_pages_have_checked_code():
    n = sum(
        check_source(source, str(path), {})
        for path in (ROOT / "README.md", DOCS / "quickstart.md")
        for _, source in code_blocks(path, PYTHON_KINDS)
    )
    assert n >= 15


def _cli_commands(path: Path) -> list[tuple[int, list[str]]]:
    commands = []
    for line, source in code_blocks(path, ("bash",)):
        source = source.replace("\\\n", " ")
        for offset, text in enumerate(source.splitlines()):
            text = text.split("#", 1)[0].strip()
            if not text.startswith("scetm-mnn"):
                continue
            argv = shlex.split(text)[1:]
            if "[" in text or {"--help", "-h", "--version"} & set(argv):
                continue  # a synopsis with [optional] parts, or help/version
            commands.append((line + offset, argv))
    return commands


def test_cli_commands_in_the_docs_parse():
    parser = build_parser()
    commands = [(p, line, argv) for p in PAGES for line, argv in _cli_commands(p)]
    assert len(commands) >= 4
    for path, line, argv in commands:
        try:
            parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"{path.name}:{line}: scetm-mnn {' '.join(argv)} does not parse")


# -- API reference -------------------------------------------------------------------------


def public_names() -> set[str]:
    names = set()
    for sub in SUBPACKAGES:
        module = importlib.import_module(f"scetm_mnn.{sub}")
        names |= {f"{sub}.{name}" for name in module.__all__}
    return names | {"cli.main", "cli.build_parser"}


def api_entries() -> list[str]:
    """``"sub.name"`` for every autosummary entry of docs/api.rst, under its ``.. module::``."""
    entries, module, in_autosummary = [], None, False
    for line in (DOCS / "api.rst").read_text().splitlines():
        if line.startswith((".. module:: ", ".. currentmodule:: ")):
            module = line.split("::", 1)[1].strip().removeprefix("scetm_mnn").lstrip(".")
        elif line.startswith(".. autosummary::"):
            in_autosummary = True
        elif in_autosummary and line.startswith("   "):
            if not line.strip().startswith(":"):  # options such as :toctree:
                entries.append(".".join(filter(None, [module, line.strip()])))
        elif line.strip():
            in_autosummary = False
    return entries


def test_api_reference_lists_every_public_name_and_nothing_private():
    entries = api_entries()
    assert len(entries) == len(set(entries)), "a name is listed twice"
    assert not [e for e in entries if any(p.startswith("_") for p in e.split("."))]
    public = public_names()
    assert sorted(public - set(entries)) == [], "public names missing from docs/api.rst"
    assert sorted(set(entries) - public) == [], "docs/api.rst lists names that are not public"


# -- CLI page ------------------------------------------------------------------------------


def _cli_help_module():
    spec = importlib.util.spec_from_file_location("cli_help", DOCS / "_scripts" / "cli_help.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_page_holds_the_current_help():
    cli_help = _cli_help_module()
    page = (DOCS / "cli.md").read_text()
    blocks = cli_help.blocks(page)
    texts = cli_help.help_texts()
    assert set(blocks) == set(texts) == {"scetm-mnn", "demo", "run"}
    if sys.version_info[:2] == (3, 11):  # the docs' interpreter; argparse's layout varies
        assert page == cli_help.render(page), "docs/cli.md is out of date: run make docs-cli"
    for name, text in texts.items():
        for option in re.findall(r"--[a-z-]+", text):
            assert option in blocks[name], (name, option)


# -- one embedding key ---------------------------------------------------------------------

#: Files outside this test's reach that still name the embedding differently; remove an
#: entry once fixed (test_pending_key_files_are_current checks that it is still needed).
PENDING_KEY_FILES: set[str] = set()
_LATENT_ASSIGN = re.compile(
    r"obsm\[[\"'](?P<key>[^\"']+)[\"']\]\s*=\s*\w+\.get_latent_representation"
)


def _key_files() -> list[Path]:
    return [*PAGES, *sorted((ROOT / "src" / "scetm_mnn").rglob("*.py"))]


def _wrong_keys(path: Path) -> list[str]:
    return [
        m.group("key")
        for m in _LATENT_ASSIGN.finditer(path.read_text())
        if m.group("key") != _pipeline.LATENT_KEY
    ]


def test_one_embedding_key_everywhere():
    assert _pipeline.LATENT_KEY == "X_scetm_mnn"
    found = {}
    for path in _key_files():
        rel = str(path.relative_to(ROOT))
        if rel not in PENDING_KEY_FILES and _wrong_keys(path):
            found[rel] = _wrong_keys(path)
    assert not found, f"embedding stored under another key than {_pipeline.LATENT_KEY!r}: {found}"
    readme = (ROOT / "README.md").read_text()
    assert readme.count(f'"{_pipeline.LATENT_KEY}"') >= 3


def test_pending_key_files_are_current():
    fixed = [f for f in PENDING_KEY_FILES if not _wrong_keys(ROOT / f)]
    assert not fixed, f"these use the one key now; remove them from PENDING_KEY_FILES: {fixed}"


# -- docs/conf.py --------------------------------------------------------------------------


def _conf(monkeypatch, offline: str) -> dict:
    monkeypatch.setenv("SCETM_MNN_DOCS_OFFLINE", offline)
    monkeypatch.setattr(sys, "path", list(sys.path))
    return runpy.run_path(str(DOCS / "conf.py"))


def test_conf_is_nitpicky_with_an_offline_switch(monkeypatch):
    offline = _conf(monkeypatch, "1")
    online = _conf(monkeypatch, "0")
    assert offline["nitpicky"] is True and online["nitpicky"] is True
    assert offline["intersphinx_mapping"] == {}
    assert set(online["intersphinx_mapping"]) == {
        "python", "numpy", "scipy", "pandas", "anndata", "scanpy", "scvi-tools", "torch",
    }  # fmt: skip
    # Offline, the external names are let through; online, intersphinx must resolve them.
    assert len(offline["nitpick_ignore_regex"]) > len(online["nitpick_ignore_regex"])
    for entry in offline["NITPICK_IGNORE"] + offline["NITPICK_IGNORE_ALWAYS"]:
        _role, pattern, reason = entry
        re.compile(pattern)
        assert len(reason) > 20, entry
        assert not re.fullmatch(pattern, "scetm_mnn.pp.mnn_correct"), "our names must resolve"
