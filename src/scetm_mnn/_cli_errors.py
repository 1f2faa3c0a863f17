"""How the ``scetm-mnn`` command reports errors: users get one line, crashes a traceback.

A *user error* is something the person running the command can fix: a missing or
unreadable input, a wrong ``obs`` key, data that are not raw counts, an output folder that
cannot be written or already holds a run, a bad option value. The package's input checks
raise these as :class:`ValueError`, :class:`KeyError` and :class:`OSError` (files,
permissions, a full disk; ``docs/bad_input.md``), and :class:`TypeError` from the input
checks of ``_validation`` (a matrix of strings). The command prints them as one line on
stderr, ``scetm-mnn: error: ... (see <troubleshooting page>)``, and exits with status 2, as
argparse does for a bad option (:class:`OneLineParser` keeps those to one line too).
Anything else is a crash: its traceback is shown. ``--debug`` shows the traceback of every
error.

The checks here run before the hours of work: :func:`check_input` (the file exists, is an
h5ad), :func:`check_out` (the folder can be written, holds no earlier run unless
``--overwrite``) and the option types (:func:`positive_int`, :func:`non_negative_float`).
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
import tempfile
import traceback
from collections.abc import Iterable
from pathlib import Path
from typing import NoReturn

TROUBLESHOOTING_URL = "https://scetm-mnn.readthedocs.io/en/latest/troubleshooting.html"
"""The documentation page that explains the error messages; printed with every error."""

USER_ERRORS = (ValueError, KeyError, OSError)
"""Exception classes that are the user's to fix, whatever raised them (see the module)."""


def is_user_error(error: BaseException) -> bool:
    """Whether ``error`` is a user error (one line, status 2) rather than a crash."""
    if isinstance(error, USER_ERRORS):
        return True
    if isinstance(error, TypeError):  # only the input checks' (a matrix of strings)
        frames = traceback.extract_tb(error.__traceback__)
        return bool(frames) and frames[-1].filename.endswith(
            os.path.join("scetm_mnn", "_validation.py")
        )
    return False


def one_line(error: BaseException) -> str:
    """The message of ``error`` on one line, the file named for an :class:`OSError`."""
    if isinstance(error, KeyError) and error.args:
        message = str(error.args[0])
    elif isinstance(error, OSError) and error.strerror:
        message = error.strerror
        named = error.filename
        if named is not None and str(named) not in message:
            message = f"{message}: {named}"
    else:
        message = str(error) or type(error).__name__
    return " ".join(message.split())


def report(error: BaseException, debug: bool) -> int:
    """Print a user error as one line (after its traceback with ``debug``); returns 2."""
    if debug:
        traceback.print_exception(error, file=sys.stderr)
    message = one_line(error)
    if TROUBLESHOOTING_URL not in message:  # most checks' messages link their own section
        message = f"{message} (see {TROUBLESHOOTING_URL})"
    print(f"scetm-mnn: error: {message}", file=sys.stderr)
    return 2


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr (status 2, as argparse's)."""

    def error(self, message: str) -> NoReturn:
        """Print ``message`` as one line with a pointer to ``--help``, and exit with 2."""
        text = " ".join(message.split())
        self.exit(2, f"{self.prog}: error: {text} (see {self.prog} --help)\n")


def positive_int(text: str) -> int:
    """An option value that must be a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def non_negative_float(text: str) -> float:
    """An option value that must be a finite number of at least 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{value} must be a finite number of at least 0")
    return value


def check_batches(obs, batch_key: str) -> None:
    """A ``--batch-key`` column of ``obs`` holds at least two batches.

    A missing column is left to the pipeline's own error.
    """
    if batch_key not in obs.columns:
        return
    batches = obs[batch_key].dropna().unique()
    if len(batches) < 2:
        raise ValueError(
            f"--batch-key {batch_key!r} holds a single batch ({', '.join(map(str, batches))}"
            "): there is nothing to correct. Pass the obs column whose values are the "
            "batches (donor, sample, plate)."
        )


def check_input(path: Path) -> None:
    """The input exists and is a readable file; raises a user error otherwise."""
    if not path.exists():
        raise FileNotFoundError(f"Input file {path} does not exist.")
    if path.is_dir():
        raise IsADirectoryError(f"Input {path} is a folder; pass an .h5ad file.")
    if not os.access(path, os.R_OK):
        raise PermissionError(f"Input file {path} cannot be read (permission denied).")


def h5ad_error(path: Path, error: Exception) -> ValueError:
    """The user error for an input that anndata cannot open."""
    reason = " ".join(str(error).split()[:40]) or type(error).__name__
    return ValueError(
        f"Input file {path} is not a readable .h5ad file (truncated, or another kind of "
        f"file): {reason}"
    )


def check_out(out: Path, overwrite: bool, outputs: Iterable[str]) -> None:
    """``out`` can be written and holds none of ``outputs`` (unless ``overwrite``).

    Checked by writing and removing a small file, so that a read-only disk or a folder
    without write permission is found before the run, not after it.
    """
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} is a file; pass a folder.")
    found = sorted(name for name in outputs if (out / name).exists())
    if found and not overwrite:
        raise FileExistsError(
            f"--out {out} already holds the outputs of a run ({', '.join(found)}); pass "
            "--overwrite to replace them, or choose another folder (nothing was changed)."
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as err:
        reason = err.strerror or str(err)
        if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise PermissionError(f"--out {out} cannot be written: {reason}.") from err
        raise OSError(err.errno, f"--out {out} cannot be written: {reason}") from err
