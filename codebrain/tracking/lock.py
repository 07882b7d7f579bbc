"""The SQLite store's lock: one writer at a time, and a wait that ends naming who holds it.

Parallel Snakemake jobs share one SQLite file: two first-time jobs race to create its schema ("duplicate column
name") and concurrent writers hit "database is locked". Every MLflow call on a SQLite store therefore holds an
exclusive lock on <db>.lock (filelock); a tracking server needs none.
"""

from __future__ import annotations

import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path

import filelock

LOCK_TIMEOUT_VARIABLE = "CODEBRAIN_LOCK_TIMEOUT"  # seconds to wait for the SQLite store's lock (default 300)


class StoreLockTimeout(RuntimeError):
    pass


def write_holder(fd: int) -> None:
    """filelock's on_acquired: the holder's pid, host and start time, for whoever times out waiting."""
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
              .encode(), 0)


@contextmanager
def store_lock(uri: str, timeout_s: float | None = None):
    """Exclusive lock beside a sqlite:/// store for the duration of the block; a wait past timeout_s (default
    $CODEBRAIN_LOCK_TIMEOUT or 300 s) ends with an error that names who holds it."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    if timeout_s is None:
        timeout_s = float(os.environ.get(LOCK_TIMEOUT_VARIABLE, 300))
    lock_path = Path(uri.removeprefix("sqlite:///") + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(lock_path, timeout=timeout_s, on_acquired=write_holder, preserve_lock_file=True)
    try:
        lock.acquire()
    except filelock.Timeout:
        holder = lock_path.read_text().strip() or "unknown (an older codebrain)"
        raise StoreLockTimeout(f"{lock_path}: MLflow store locked for over {timeout_s:g} s by {holder}; "
                               f"stop that process or raise {LOCK_TIMEOUT_VARIABLE}") from None
    try:
        yield
    finally:
        lock.release()
