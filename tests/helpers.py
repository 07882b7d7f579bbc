"""Helpers shared by the tests: a tiny synthetic slice store and model config, the `codebrain` CLI run as the
rules run it, and Snakemake run on a copy of the workflow with the tiny configs."""

import atexit
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.ndimage import gaussian_filter

CONTRASTS = ["T1", "T2", "PD"]
MODEL = {"width": 4, "enc_blocks": [1, 1], "dec_blocks": [1, 1], "middle_blocks": 1, "code_dim": 3, "levels": 5,
         "prior_width": 4, "prior_enc_blocks": [1, 1], "prior_middle_blocks": 1, "disc_width": 8, "disc_layers": 2}


def make_store(folder: Path, n_train=16, n_val=4, size=16, seed=0, nan_slice=None, tumours=False) -> Path:
    """Slices whose three contrasts are different intensity maps of one smooth anatomy; with tumours,
    a disc on half the slices, bright in the first contrast only, labelled 1..3 from the rim in."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    splits = {}
    yy, xx = np.mgrid[:size, :size]
    for split, count in (("train", n_train), ("val", n_val), ("test", n_val)):
        anatomy = np.stack([gaussian_filter(rng.random((size, size)), 2) for _ in range(count)])
        anatomy = (anatomy - anatomy.min()) / (anatomy.max() - anatomy.min())
        stack = np.stack([anatomy, 1 - anatomy, anatomy ** 2], 1).astype(np.float16)
        if split == "train" and nan_slice is not None:
            stack[nan_slice, 0, 0, 0] = np.nan
        if tumours:
            labels = np.zeros((count, size, size), np.uint8)
            for i in range(0, count, 2):
                centre, radius = rng.uniform(size / 4, 3 * size / 4, 2), rng.uniform(size / 8, size / 5)
                distance = np.hypot(yy - centre[0], xx - centre[1]) / radius
                labels[i] = np.select([distance < 0.4, distance < 0.7, distance < 1], [1, 3, 2], 0)
            stack[:, 0] = np.where(labels > 0, 1.0, stack[:, 0])
            np.save(folder / f"{split}_labels.npy", labels)
        subjects = np.arange(count) // 4  # four slices per "subject"
        pd.DataFrame({"subject": [f"s{s}" for s in subjects], "z": np.arange(count) % 4}).to_csv(
            folder / f"{split}.tsv", sep="\t", index_label="index")
        np.save(folder / f"{split}.npy", stack)
        splits[split] = {"subjects": 1, "slices": count, "labels": tumours}
    (folder / "store.json").write_text(json.dumps({"contrasts": CONTRASTS, "splits": splits, "size": size,
                                                   "dtype": "float16"}))
    return folder


def cli(*args, processes=1, check=True, env=None):
    """The codebrain CLI; processes > 1: under accelerate launch, data-parallel on the CPU (gloo)."""
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0"]
    command = [*(launch if processes > 1 else [sys.executable]), "-m", "codebrain.cli", *map(str, args)]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return result


def run_cli(*args, check=True, env=None) -> subprocess.CompletedProcess:
    """The codebrain CLI in this process, where a separate process is not the point: no interpreter start-up and no
    second import of torch and mlflow. Its exit code and output as a finished process's; check: fail the test on a
    non-zero exit. The environment is restored after it, as a process's would be (mlflow.set_tracking_uri exports
    MLFLOW_TRACKING_URI, which the next command would read). env: variables for this command; an
    MLFLOW_TRACKING_URI there is also the store of this process's MLflow calls (which an earlier
    mlflow.set_tracking_uri would otherwise override)."""
    import contextlib
    import io

    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    from codebrain.cli import main

    argv, environment = [str(a) for a in args], dict(os.environ)
    stdout, stderr = io.StringIO(), io.StringIO()
    store = (env or {}).get("MLFLOW_TRACKING_URI")
    os.environ.update(env or {})
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr), \
                (_use_tracking_uri(store) if store else contextlib.nullcontext()):
            code = main(argv)
    except SystemExit as exit_:  # argparse's usage errors
        code = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        os.environ.clear()
        os.environ.update(environment)
    result = subprocess.CompletedProcess(["codebrain", *argv], code, stdout.getvalue(), stderr.getvalue())
    if check and code != 0:
        raise AssertionError(f"codebrain {' '.join(argv)} exited {code}:\n{result.stderr[-3000:]}")
    return result


REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "config" / "tiny.yaml"
TINY_BRATS = REPO / "tests" / "config" / "tiny-brats.yaml"


@cache
def workflow_copy() -> Path:
    """A copy of the workflow and package sources, made once per session, that these tests run, so one can
    edit a source file (the code rerun trigger) without touching the repository; jobs run the installed
    package."""
    copy = Path(tempfile.mkdtemp(prefix="codebrain-workflow-copy-"))
    atexit.register(shutil.rmtree, copy, ignore_errors=True)
    for part in ("workflow", "config", "envs", "codebrain", "profiles"):
        shutil.copytree(REPO / part, copy / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "Snakefile", copy / "Snakefile")
    return copy


def snakemake_command() -> list[str]:
    return [sys.executable, "-m", "snakemake", "--cores", "2", "-s", str(workflow_copy() / "Snakefile")]


def snakemake(workdir, *args, configfile=TINY, check=True):
    result = subprocess.run(snakemake_command() + ["-d", str(workdir), *args, "--configfile", str(configfile)],
                            capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(result.stdout[-3000:] + result.stderr[-3000:])
    return result


def planned_jobs(workdir, *args, configfile=TINY) -> dict[str, int]:
    """Job counts per rule from a dry run."""
    out = snakemake(workdir, *args, "-n", "--quiet", "rules", configfile=configfile)
    text = out.stdout + out.stderr
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", text, re.M) if m[1] != "total"}
