"""Check an installed scetm-mnn wheel: run by ``make dist-check`` and the release workflow.

Run it with the interpreter of the venv that the wheel was installed into, from a folder
outside the source tree, passing the wheel's path. It checks that ``scetm_mnn`` is
imported from that venv (not from ``src/``), that its ``__version__`` is the wheel's,
that ``py.typed`` and the LICENSE were packaged, and that the ``scetm-mnn`` command is
installed and prints that version.
"""

from __future__ import annotations

import contextlib
import io
import sys
import sysconfig
from importlib.metadata import distribution
from pathlib import Path


def main(wheel: str) -> None:
    """Fail with a message on the first check that does not hold."""
    import scetm_mnn

    site = Path(sysconfig.get_paths()["purelib"]).resolve()
    where = Path(scetm_mnn.__file__).resolve()
    assert site in where.parents, f"scetm_mnn imported from {where}, not from {site}"
    expected = Path(wheel).name.split("-")[1]
    assert scetm_mnn.__version__ == expected, (scetm_mnn.__version__, expected)
    assert (where.parent / "py.typed").is_file(), "py.typed is missing from the wheel"
    dist = distribution("scetm-mnn")
    assert dist.version == expected, (dist.version, expected)
    assert dist.metadata["License-Expression"] == "BSD-3-Clause", dist.metadata.get_all(
        "License-Expression"
    )
    assert any(f.name == "LICENSE" for f in dist.files or []), "LICENSE is not in the wheel"
    (entry,) = [e for e in dist.entry_points if e.name == "scetm-mnn"]
    assert entry.value == "scetm_mnn.cli:main", entry.value
    assert (Path(sys.executable).parent / "scetm-mnn").is_file(), "no scetm-mnn script"
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        entry.load()(["--version"])
    assert out.getvalue().strip() == f"scetm-mnn {expected}", out.getvalue()
    print(f"ok: scetm-mnn {expected} from {where.parent}")


if __name__ == "__main__":
    main(sys.argv[1])
