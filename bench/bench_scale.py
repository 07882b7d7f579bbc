"""The pipeline at N subjects: planning, the data half against its in-process work, each job's fixed cost, and
tracking under 32 concurrent jobs (issue 26). Outside CI; one command, about 15 minutes on 2 cores:

    python bench/bench_scale.py --out bench/results/scale-2cores.json

Cohorts are N real-named subjects (BraTS2021_00001 ...), each a folder of symlinks to one of the real BraTS 2018
cases in --source, in turn, and config/brats-sample.yaml pointed at them (its pinned subjects dropped). Measured:
- `snakemake -n` wall at every N of --sizes;
- at --data-half N: the data half (check_raw, extract_slices per subject, build_slice_store) through Snakemake
  with --cores, against the same functions called in one process (the work itself);
- one extract_slices job's fixed cost taken apart, each in a fresh process: the interpreter, the command's
  imports, and its run opened and closed, journaled (deferred, as inside an invocation) or on the SQLite store;
- 32 jobs opening, logging and closing a run at once: on the SQLite store (each job under its lock), on an
  `mlflow server` over it, and journaled then logged in one pass; each job's seconds spent on tracking, runs
  lost or left RUNNING, "database is locked" seen.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from codebrain.tracking.runs import PARENT_RUN_VARIABLE

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO.parent / "shared" / "realdata" / "brats2018"
JOB = """
import json, sys, time
from codebrain.tracking.tracker import Tracker  # what every step imports anyway (codebrain.cli.common.step_run)
start, cpu = time.perf_counter(), time.process_time()
tracker = Tracker(True, sys.argv[1], "scale", sys.argv[2], {"rule": "extract_slices", "subject": sys.argv[2]},
                  {"size": 64})  # journaled inside an invocation (its run id in the environment), else on the store
tracker.log_metrics({"slices": 32})
tracker.log_dict({"subject": sys.argv[2]}, "files.json")
tracker.finish(None)
print(json.dumps({"tracking_s": time.perf_counter() - start, "tracking_cpu_s": time.process_time() - cpu,
                  "offline": tracker.offline}))
"""


def cohort(n: int, source: Path, root: Path) -> list[str]:
    """n subject folders of symlinks, BraTS 2021 names, the real cases in turn."""
    cases = sorted(p for p in source.iterdir() if p.is_dir())
    names = []
    for i in range(n):
        case, name = cases[i % len(cases)], f"BraTS2021_{i + 1:05d}"
        (root / name).mkdir(parents=True)
        for path in case.glob("*.nii.gz"):
            kind = re.search(r"_(t1|t1ce|t2|flair|seg)\.nii\.gz$", path.name)[1]
            (root / name / f"{name}_{kind}.nii.gz").symlink_to(path.resolve())
        names.append(name)
    return names


def project(n: int, source: Path, folder: Path) -> Path:
    """A project folder with an n-subject cohort and its config; returns the config file."""
    cohort(n, source, folder / "data" / "cohort")
    config = yaml.safe_load((REPO / "config" / "brats-sample.yaml").read_text())
    config["dataset"].update(name=f"scale-{n}", root="data/cohort")
    config["splits"]["pinned"] = {}
    config["download"]["urls"] = []
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def snakemake(folder: Path, config: Path, *args: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(folder),
                    "--configfile", str(config), *args], check=True, capture_output=True, text=True)
    return time.perf_counter() - start


def in_process_work(folder: Path, config: Path) -> float:
    """The data half's functions in one process, as its jobs call them: seconds."""
    script = f"""
import json, time, yaml
from pathlib import Path
from codebrain.data.layouts import discover
from codebrain.data.manifest import build_manifest
from codebrain.data.slices import extract_subject, slice_config
from codebrain.data.store import assign_splits, build_store
config = yaml.safe_load(open({str(config)!r}))
out = Path({str(folder)!r}) / "in-process"
start = time.perf_counter()
subjects = discover({str(folder / 'data' / 'cohort')!r}, "brats", config["dataset"]["contrasts"], "drop", True)
build_manifest(subjects, out / "manifest.tsv")
cfg, files = slice_config(config["slices"]), {{}}
for subject, found in subjects.items():
    labels = found.pop("seg")
    extract_subject(subject, found, config["dataset"]["contrasts"], cfg, out / f"{{subject}}.npz", None, labels)
    files[subject] = out / f"{{subject}}.npz"
assignment = assign_splits(sorted(files), config["splits"]["fractions"], 0)
build_store(files, assignment, config["dataset"]["contrasts"], out / "store", cfg)
print(time.perf_counter() - start)
"""
    done = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True, cwd=folder)
    return float(done.stdout.split()[-1])


def fresh_process_s(code: str, env: dict | None = None) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, env={**os.environ, **(env or {})})
    return time.perf_counter() - start


def fixed_cost(folder: Path, repeats: int = 3) -> dict:
    """One extract_slices job's fixed cost in parts, each the median of `repeats` fresh processes."""
    uri = f"sqlite:///{folder / 'fixed' / 'mlflow.db'}"
    job = f"import sys; sys.argv[1:] = [{uri!r}, 's']\n{JOB}"
    parts = {"interpreter": ("pass", {}), "command imports": ("import codebrain.cli, codebrain.data.slices", {}),
             "run journaled (deferred)": (job, {PARENT_RUN_VARIABLE: "0" * 32}), "run on the SQLite store": (job, {})}
    fresh_process_s(job)  # the store's schema is made once, not per job
    found = {}
    for name, (code, env) in parts.items():
        times = sorted(fresh_process_s(code, env) for _ in range(repeats))
        found[name] = times[len(times) // 2]
    base = found["interpreter"]
    return {name: (s if name == "interpreter" else s - base) for name, s in found.items()}


def concurrent_jobs(uri: str, count: int, env: dict, cwd: Path) -> dict:
    """`count` jobs started at once, each opening, logging and closing one run: their seconds on tracking (wall
    and CPU), how many saw "database is locked", failed, or had their run sent offline by a failing store."""
    jobs = [subprocess.Popen([sys.executable, "-c", JOB, uri, f"job-{i:02d}"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env={**os.environ, **env}, cwd=cwd)
            for i in range(count)]
    start, reports, locked, failed = time.perf_counter(), [], 0, 0
    for job in jobs:
        out, err = job.communicate(timeout=900)
        locked += "database is locked" in err
        failed += job.returncode != 0
        if job.returncode == 0:
            reports.append(json.loads(out.splitlines()[-1]))
    wall = [r["tracking_s"] for r in reports]
    return {"wall_s": time.perf_counter() - start, "tracking_s_max": max(wall), "tracking_s_mean": sum(wall) / len(wall),
            "tracking_cpu_s_max": max(r["tracking_cpu_s"] for r in reports), "database_is_locked": locked,
            "failed_jobs": failed, "runs_offline": sum(r["offline"] is not None for r in reports)}


def runs_left(uri: str, experiment: str, count: int) -> dict:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id], max_results=5000)
    jobs = [run for run in runs if run.info.run_name.startswith("job-")]
    return {"runs_lost": count - len({run.info.run_name for run in jobs}),
            "runs_running": sum(run.info.status == "RUNNING" for run in jobs)}


def tracking_under_concurrency(folder: Path, count: int) -> dict:
    from codebrain.tracking.deferred import sync_deferred
    from codebrain.tracking.runs import open_invocation

    found = {}
    sqlite = f"sqlite:///{folder / 'sqlite' / 'mlflow.db'}"
    subprocess.run([sys.executable, "-c", f"import sys; sys.argv[1:] = [{sqlite!r}, 'first']\n{JOB}"],
                   check=True, capture_output=True)  # the schema, made once
    found["SQLite store, each job under its lock"] = {**concurrent_jobs(sqlite, count, {}, folder),
                                                      **runs_left(sqlite, "scale", count)}
    port = free_port()
    server_db = folder / "server" / "mlflow.db"
    server_db.parent.mkdir(parents=True)
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                               "--backend-store-uri", f"sqlite:///{server_db}", "--artifacts-destination",
                               str(folder / "server" / "artifacts"), "--workers", "2"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        http = f"http://127.0.0.1:{port}"
        wait_for(http)
        found["mlflow server over SQLite"] = {**concurrent_jobs(http, count, {}, folder),
                                              **runs_left(http, "scale", count)}
    finally:
        server.terminate()
        server.wait()
    journaled = f"sqlite:///{folder / 'deferred' / 'mlflow.db'}"
    parent = open_invocation(journaled, "scale", {"rule": "workflow"}, {})
    found["journaled, then one pass"] = concurrent_jobs(journaled, count, {PARENT_RUN_VARIABLE: parent}, folder)
    start = time.perf_counter()
    sync_deferred(journaled)
    found["journaled, then one pass"].update(sync_s=time.perf_counter() - start, **runs_left(journaled, "scale", count))
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, timeout_s: float = 120) -> None:
    import urllib.request

    deadline = time.time() + timeout_s
    while True:
        try:
            urllib.request.urlopen(url + "/health", timeout=2).read()
            return
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.5)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=SOURCE, help="folders of real BraTS 2018 cases")
    parser.add_argument("--sizes", type=int, nargs="*", default=[10, 100, 1000], help="cohorts to plan")
    parser.add_argument("--data-half", type=int, default=100, help="cohort whose data half runs (0: none)")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--concurrent", type=int, default=32, help="tracked jobs at once (0: none)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    result = {"host": socket.gethostname(), "cpus": os.cpu_count(), "planning_s": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for n in args.sizes:
            config = project(n, args.source, tmp / f"plan-{n}")
            result["planning_s"][n] = snakemake(tmp / f"plan-{n}", config, "-n", "--quiet", "rules")
            print(f"planning {n} subjects: {result['planning_s'][n]:.1f} s", flush=True)
        if args.data_half:
            n, folder = args.data_half, tmp / "data-half"
            config = project(n, args.source, folder)
            store = f"results/scale-{n}/slices/store.json"
            wall = snakemake(folder, config, "--cores", str(args.cores), store)
            jobs = [float(line.split("\t")[0]) for tsv in (folder / f"results/scale-{n}/benchmarks").rglob("*.tsv")
                    for line in tsv.read_text().splitlines()[1:]]
            work = in_process_work(folder, config)
            result["data_half"] = {"subjects": n, "cores": args.cores, "wall_s": wall, "in_process_s": work,
                                   "ratio": wall / work, "jobs": len(jobs), "job_wall_sum_s": sum(jobs)}
            print(f"data half, {n} subjects: {wall:.0f} s wall, {work:.0f} s in one process "
                  f"({wall / work:.2f}x)", flush=True)
        result["fixed_cost_s"] = fixed_cost(tmp)
        print("fixed cost of one job:", json.dumps({k: round(v, 2) for k, v in result["fixed_cost_s"].items()}),
              flush=True)
        if args.concurrent:
            result["concurrent"] = tracking_under_concurrency(tmp, args.concurrent)
            for name, found in result["concurrent"].items():
                print(f"{args.concurrent} jobs, {name}: " + json.dumps({k: round(v, 2) for k, v in found.items()}),
                      flush=True)
        shutil.rmtree(tmp, ignore_errors=True)
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
