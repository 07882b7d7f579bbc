"""What every part of the package shares: the input-error type, what a failing store raises, atomic writes,
the compute device.

Kept at the top level so that data, models, training and evaluation import it without importing
each other (docs/design.md, "Imports").
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path


class InputError(ValueError):
    """Bad input data; the message names the file and the problem."""


def store_errors() -> tuple[type[Exception], ...]:
    """What a failing MLflow store raises: MLflow's own errors, SQLAlchemy's, the file system's and an HTTP
    server's. A step survives these (its run waits offline); any other exception is a bug and fails the step."""
    from mlflow.exceptions import MlflowException
    from requests.exceptions import RequestException
    from sqlalchemy.exc import SQLAlchemyError

    return MlflowException, SQLAlchemyError, OSError, RequestException


@contextmanager
def write_atomic(path: str | Path):
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds. A part file that a
    killed writer of the same path left (a SIGKILL skips the cleanup below) is swept first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes)
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.part{glob.escape(suffix)}"):
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".part{suffix}", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; the result should read like any other file
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextmanager
def scratch_folder(folder: str | Path, prefix: str, as_tempdir: bool = False):
    """Yield a temporary folder `<folder>/<prefix>*`, removed on exit; folders of that prefix that a killed run left
    there (a SIGKILL skips the removal) are swept first. as_tempdir: also the process's temporary folder meanwhile,
    for third-party code that makes its own temporary files (MLflow's model logging) and cannot be told where."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(f"{glob.escape(prefix)}*"):
        shutil.rmtree(stale, ignore_errors=True)
    previous = tempfile.tempdir
    with tempfile.TemporaryDirectory(prefix=prefix, dir=folder) as scratch:
        if as_tempdir:
            tempfile.tempdir = scratch
        try:
            yield Path(scratch)
        finally:
            tempfile.tempdir = previous


def default_device() -> str:
    """The first visible GPU when there is one, else the CPU (inference steps; training asks Accelerate)."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def sha256sum(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()
