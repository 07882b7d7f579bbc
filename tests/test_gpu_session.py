"""bench/gpu_session.sh, the prepared GPU script, at tiny size on the CPU: every (stage, variant) row is written with
its speed and its numerical check, and regional compilation's gradients match eager's."""

import json
import os
import subprocess

import pytest

from helpers import REPO


@pytest.mark.slow
def test_the_prepared_gpu_script_runs_at_tiny_size(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "MODEL": "tiny", "SIZE": "32", "BATCH": "2", "STEPS": "2",
           "EAGER_S": "500", "COMPILE_S": "500", "VARIANTS": "fp32 fp32+regional_compile"}
    result = subprocess.run(["bash", str(REPO / "bench" / "gpu_session.sh")], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads((tmp_path / "training.json").read_text())["rows"]
    found = {(row["stage"], row["variant"]): row for row in rows}
    assert set(found) == {(stage, variant) for stage in ("stage1", "stage2") for variant in ("fp32", "fp32+regional_compile")}
    for (stage, variant), row in found.items():
        assert row["samples_per_s"] > 0 and row["check_passed"], (stage, variant, row)
        if variant == "fp32":
            assert row["grad_rel_diff"] == 0  # the same seeded weights and inputs, the same eager path
        else:
            assert row["grad_rel_diff"] <= 1e-4
    assert (tmp_path / "device.txt").read_text().strip().endswith("cpu")
