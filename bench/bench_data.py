"""Data-side benchmarks: ANTs registration seconds per subject, slice loader throughput at 256x256.

    python bench/bench_data.py [--out bench/data.json] [--slices 1536] [--skip-1mm]

Prints a table and writes JSON. Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, RandomSampler

from codebrain.data.dataset import SliceDataset
from codebrain.data.phantom import PhantomConfig, make_subject
from codebrain.data.registration import register_subject

REALDATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "realdata"


def time_registration(volumes: dict, reference: str, workdir: Path) -> float:
    start = time.perf_counter()
    register_subject(volumes, reference, workdir)
    return time.perf_counter() - start


def registration_rows(workdir: Path, skip_1mm: bool) -> list[dict]:
    rows = []
    for downsample in ([3.0] if skip_1mm else [3.0, 1.0]):
        files = make_subject(1, PhantomConfig(flavour="ixi", downsample=downsample), workdir / f"ph{downsample}")
        volumes = {c: files[c] for c in ("T1", "T2", "PD")}
        seconds = time_registration(volumes, "T2", workdir / f"reg{downsample}")
        rows.append({"case": f"phantom IXI, {downsample:g} mm, 2 moving", "seconds": seconds})
    ixi = REALDATA / "ixi-thick" / "IXI002-Guys-0828"
    volumes = {c: ixi / f"ds_IXI002-Guys-0828-{c}.nii.gz" for c in ("T1", "T2", "PD")}
    rows.append({"case": "real IXI002 (6 mm slices), 2 moving",
                 "seconds": time_registration(volumes, "T2", workdir / "reg-ixi")})
    return rows


def loader_rows(workdir: Path, n_slices: int) -> list[dict]:
    store = workdir / "store"
    store.mkdir()
    array = np.lib.format.open_memmap(store / "train.npy", mode="w+", dtype=np.float16, shape=(n_slices, 3, 256, 256))
    array[:] = np.random.default_rng(0).random((n_slices, 3, 256, 256), dtype=np.float32)
    array.flush()
    (store / "store.json").write_text(json.dumps({"contrasts": ["T1", "T2", "PD"], "splits": {"train": {}}}))
    rows = []
    dataset = SliceDataset(store, "train")
    for workers in (0, 1):
        loader = DataLoader(dataset, batch_size=48, sampler=RandomSampler(dataset), num_workers=workers)
        for _ in loader:  # one warm epoch: page cache and worker start-up
            break
        start, seen = time.perf_counter(), 0
        for batch in loader:
            seen += len(batch["image"])
        seconds = time.perf_counter() - start
        rows.append({"case": f"SliceDataset+DataLoader, batch 48, shuffled, workers={workers}",
                     "slices_per_s": seen / seconds})
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench/data.json")
    parser.add_argument("--slices", type=int, default=1536)
    parser.add_argument("--skip-1mm", action="store_true", help="leave out the 1 mm phantom registration")
    args = parser.parse_args()
    torch.set_num_threads(1)
    os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")
    with tempfile.TemporaryDirectory() as tmp:
        registration = registration_rows(Path(tmp), args.skip_1mm)
        loader = loader_rows(Path(tmp), args.slices)
    result = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "torch": torch.__version__, "itk_threads": os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"],
              "registration": registration, "loader": loader}
    print(f"{'registration (one subject)':58s} seconds")
    for row in registration:
        print(f"{row['case']:58s} {row['seconds']:8.1f}")
    print(f"{'slice loader at 256x256, 3 contrasts, float16 store':58s} slices/s")
    for row in loader:
        print(f"{row['case']:58s} {row['slices_per_s']:8.0f}")
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
