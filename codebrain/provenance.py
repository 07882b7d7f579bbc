"""What made an artefact: the package version, the git commit of its checkout and where a process runs.

The bottom layer: checkpoints, BIDS sidecars and MLflow runs all record it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import socket
import subprocess
from pathlib import Path

from codebrain import __version__


@functools.cache
def git_commit() -> str:
    """The commit of the package's checkout; one `git` call per process."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def config_hash(section: dict) -> str:
    """The short hash of a config section that runs and resumable outputs are tagged with."""
    return hashlib.sha256(json.dumps(section, sort_keys=True).encode()).hexdigest()[:12]


def code_version() -> dict:
    """The package version and the checkout's commit, as checkpoints and sidecars record them."""
    return {"version": __version__, "git_commit": git_commit()}


def process_provenance() -> dict:
    """Where a run ran: host, process and Snakemake version. Host and pid let a later invocation tell a run whose
    process was killed (tracking.runs.mark_killed_runs)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        snakemake_version = version("snakemake")
    except PackageNotFoundError:
        snakemake_version = "none"
    return {"host": socket.gethostname(), "pid": os.getpid(), "snakemake_version": snakemake_version}
