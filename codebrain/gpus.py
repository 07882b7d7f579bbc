"""Disjoint GPUs for jobs that share a machine.

Snakemake's `gpu` resource only counts: with `--resources gpu=8` two 4-GPU jobs may run at once,
but nothing tells each one which four. A job claims free device indices by holding an exclusive
lock on one file per device (<lock_dir>/gpu<i>.lock) for as long as its command runs, and sets
CUDA_VISIBLE_DEVICES to them. The kernel drops a lock with its process, so a killed job frees
its GPUs without cleanup. Under SLURM the scheduler assigns the devices and nothing is claimed.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import filelock

from codebrain.io import InputError


def machine_gpus() -> list[str]:
    """Device indices this process may use: CUDA_VISIBLE_DEVICES when set, else what nvidia-smi lists."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d for d in visible.split(",") if d.strip()]
    if shutil.which("nvidia-smi") is None:
        return []
    listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout
    return [str(i) for i, line in enumerate(listing.splitlines()) if line.startswith("GPU ")]


def default_lock_dir() -> Path:
    return Path(tempfile.gettempdir()) / f"codebrain-gpus-{os.getuid()}"


class GpuClaim:
    """`count` of `devices`, each held by an exclusive lock on its file (filelock) until release()."""

    def __init__(self, count: int, devices: list[str], lock_dir: Path | None = None, wait_s: float | None = None,
                 poll_s: float = 0.5):
        if count > len(devices):
            raise InputError(f"a job asks for {count} GPUs; this machine has {len(devices)} "
                             f"({','.join(devices) or 'none'}): lower training.gpus")
        lock_dir = lock_dir or default_lock_dir()
        lock_dir.mkdir(parents=True, exist_ok=True)
        self.devices, self._locks = [], []
        deadline = None if wait_s is None else time.monotonic() + wait_s
        while True:
            for device in devices:
                lock = filelock.FileLock(lock_dir / f"gpu{device}.lock", timeout=0, preserve_lock_file=True)
                try:
                    lock.acquire()
                except filelock.Timeout:
                    continue
                self.devices.append(device)
                self._locks.append(lock)
                if len(self.devices) == count:
                    return
            self.release()  # all or nothing: two jobs holding half each would wait on each other forever
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"{count} GPUs not free within {wait_s} s")
            time.sleep(poll_s * (1 + random.random()))

    def release(self) -> None:
        for lock in self._locks:
            lock.release()
        self.devices, self._locks = [], []


def run_with_gpus(count: int, command: list[str], devices: list[str] | None = None,
                  lock_dir: Path | None = None) -> int:
    """Run command with CUDA_VISIBLE_DEVICES set to `count` GPUs no other job holds (none: CPU only)."""
    if count == 0:
        return subprocess.run(command, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}).returncode
    if os.environ.get("SLURM_JOB_ID"):  # SLURM gave this job its GPUs already (--gpus): use what it set
        return subprocess.run(command).returncode
    claim = GpuClaim(count, machine_gpus() if devices is None else devices, lock_dir)
    try:
        print(f"GPUs {','.join(claim.devices)} for: {' '.join(command)}", flush=True)
        return subprocess.run(command, env={**os.environ, "CUDA_VISIBLE_DEVICES": ",".join(claim.devices)}).returncode
    finally:
        claim.release()
