"""GPU assignment for jobs sharing a machine, checked without a GPU: device indices are just names here."""

import json
import signal
import subprocess
import sys
import time

import pytest

from codebrain.gpus import GpuClaim

# A job that says when it got its devices (a .started file), then holds them until a release file appears
HOLD = """import json, os, pathlib, sys, time
started, release = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
t0 = time.time()
started.write_text(os.environ["CUDA_VISIBLE_DEVICES"])
while not release.exists():
    time.sleep(0.02)
print(json.dumps({"devices": os.environ["CUDA_VISIBLE_DEVICES"], "start": t0, "end": time.time()}))
"""


def with_gpus(count, lock_dir, name, devices="0,1,2,3,4,5,6,7"):
    """A job under `codebrain with-gpus`, holding its devices until release(lock_dir, name)."""
    return subprocess.Popen([sys.executable, "-m", "codebrain.cli", "with-gpus", "--count", str(count), "--devices",
                             devices, "--lock-dir", str(lock_dir), "--", sys.executable, "-c", HOLD,
                             str(lock_dir / f"{name}.started"), str(lock_dir / f"{name}.release")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def release(lock_dir, name):
    (lock_dir / f"{name}.release").touch()


def wait_started(lock_dir, name, process, timeout_s=60):
    deadline = time.monotonic() + timeout_s
    while not (lock_dir / f"{name}.started").exists():
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline, f"{name} never got its GPUs"
        time.sleep(0.02)


def report(process):
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


def test_two_concurrent_four_gpu_jobs_get_disjoint_devices(tmp_path):
    first, second = with_gpus(4, tmp_path, "a"), with_gpus(4, tmp_path, "b")
    wait_started(tmp_path, "a", first)
    wait_started(tmp_path, "b", second)  # both hold their devices at once: neither is released yet
    release(tmp_path, "a")
    release(tmp_path, "b")
    a, b = report(first), report(second)
    devices_a, devices_b = set(a["devices"].split(",")), set(b["devices"].split(","))
    assert len(devices_a) == len(devices_b) == 4 and not devices_a & devices_b


def test_a_job_waits_until_enough_gpus_are_free(tmp_path):
    holder = with_gpus(6, tmp_path, "holder")
    wait_started(tmp_path, "holder", holder)
    waiter = with_gpus(4, tmp_path, "waiter")  # only 2 free until the holder ends
    release(tmp_path, "waiter")
    time.sleep(1.0)
    assert not (tmp_path / "waiter.started").exists() and waiter.poll() is None
    release(tmp_path, "holder")
    held, waited = report(holder), report(waiter)
    assert waited["start"] >= held["end"]


def test_a_killed_job_frees_its_gpus(tmp_path):
    holder = with_gpus(8, tmp_path, "holder")
    wait_started(tmp_path, "holder", holder)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    claim = GpuClaim(8, [str(i) for i in range(8)], tmp_path, wait_s=5)
    assert len(claim.devices) == 8
    claim.release()
    release(tmp_path, "holder")  # its orphaned command ends too


def test_more_gpus_than_the_machine_has_is_refused(tmp_path):
    result = with_gpus(4, tmp_path, "job", devices="0,1")
    _, err = result.communicate(timeout=60)
    assert result.returncode == 2 and "asks for 4 GPUs; this machine has 2" in err


def test_zero_gpus_hides_every_device(tmp_path):
    release(tmp_path, "job")
    assert report(with_gpus(0, tmp_path, "job"))["devices"] == ""


def test_no_command_is_an_error(tmp_path):
    result = subprocess.run([sys.executable, "-m", "codebrain.cli", "with-gpus", "--count", "1"], capture_output=True,
                            text=True)
    assert result.returncode == 2 and "no command given" in result.stderr


@pytest.mark.parametrize("count", [1, 3])
def test_claims_are_all_or_nothing(tmp_path, count):
    held = GpuClaim(2, ["0", "1", "2"], tmp_path)
    if count > 1:
        with pytest.raises(TimeoutError):
            GpuClaim(count, ["0", "1", "2"], tmp_path, wait_s=0.5, poll_s=0.1)
    else:
        assert GpuClaim(count, ["0", "1", "2"], tmp_path, wait_s=0.5).devices == ["2"]
    held.release()


@pytest.mark.parametrize("allowed,visible,expected", [(8, "0,1", 8), (None, "0,1,2,3", 4), (None, "", 1), (0, "0", 0)])
def test_all_gpus_is_what_the_invocation_allows(monkeypatch, allowed, visible, expected):
    """`training.gpus: all`: --resources gpu=N when given, else the GPUs this machine shows (at least one: a
    login node shows none, and a local run without GPUs is refused at start-up); a count stays as it is."""
    from codebrain.workflow import resolve_gpus

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    config = {"training": {"gpus": "all"}}
    resolve_gpus(config, allowed)
    assert config["training"]["gpus"] == expected
    config = {"training": {"gpus": 2}}
    resolve_gpus(config, allowed)
    assert config["training"]["gpus"] == 2
