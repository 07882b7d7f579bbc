"""The SLURM profile on a real single-node cluster (tests/slurm/start_cluster.sh, as root): the tiny DAG
submitted with sbatch through snakemake-executor-plugin-slurm, the per-subject chain as job groups, outputs
checked after."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

pytestmark = pytest.mark.slow  # whole-pipeline runs: python -m pytest -m slow

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "config" / "tiny.yaml"


@pytest.fixture(scope="module")
def cluster():
    missing = [tool for tool in ("slurmctld", "slurmd", "munged", "sbatch") if shutil.which(tool) is None
               and not Path(f"/usr/sbin/{tool}").exists()]
    if missing or os.geteuid() != 0:
        reason = f"SLURM not installed ({', '.join(missing)})" if missing else "not root"
        if os.environ.get("CODEBRAIN_REQUIRE_SLURM"):
            pytest.fail(f"{reason}: .ci/run installs slurmctld, slurmd and munge with apt-get")
        pytest.skip(reason)
    subprocess.run(["bash", str(REPO / "tests" / "slurm" / "start_cluster.sh")], check=True, capture_output=True)


def test_tiny_dag_runs_through_the_slurm_profile(cluster, tmp_path):
    config = json.loads(json.dumps(yaml.safe_load(TINY.read_text())))
    config["phantom"]["n_subjects"] = 3
    config["splits"]["fractions"] = {"train": 0.34, "val": 0.33, "test": 0.33}
    config["experiments"] = {"codebrain": config["experiments"]["codebrain"]}
    configfile = tmp_path / "config.yaml"
    configfile.write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path),
               "--configfile", str(configfile), "--workflow-profile", str(REPO / "workflow" / "profiles" / "slurm"),
               "--slurm-no-account", "--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "1",
               "--jobs", "4", "--cores", "2"]  # a group job asks for at most the test node's 2 CPUs
    result = subprocess.run(command, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    log = result.stdout + result.stderr
    logs = re.findall(r"submitted with SLURM jobid \d+ \(log: (\S+?)\)", log)
    assert logs, log[-3000:]
    # slurm_logs/group_<group>_<its rules>/... for a group job, slurm_logs/rule_<rule>/... for a job submitted alone
    alone = [path for path in logs if re.search(r"/rule_(make_phantom_subject|register_subject|extract_slices)/", path)]
    assert not alone, alone
    # three subjects' phantom, registration and slicing jobs (9) in two submissions: fewer sbatch calls than subjects
    for group in ("raw_subjects", "subjects"):
        assert 1 <= sum(f"/group_{group}_" in path for path in logs) < 3, logs
    out = tmp_path / "results" / "tiny"
    assert len(list((out / "registered").glob("*/qc.json"))) == 3
    summary = pd.read_csv(out / "metrics" / "summary.csv")
    assert set(summary.group) == {"O->O", "M->O", "ALL"}
    jobs = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout.split()
    assert not jobs, f"jobs left in the queue: {jobs}"
