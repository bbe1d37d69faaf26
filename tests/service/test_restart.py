"""Results outlive the process; a crash mid-job leaves a failed job with the reason, not a stuck one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scenewright.protocol import STATE_FILE_NAME
from scenewright.service.storage import INTERRUPTED_MESSAGE, NEVER_STARTED_MESSAGE


def test_restart_serves_earlier_results(make_service, scene, tmp_path):
    first = make_service(tmp_path / "data")
    job = first.submit(scene["image"], seg=scene["seg"], settings={"steps": 1, "mesh_resolution": 32}).json()
    assert first.wait(job["job_id"])["state"] == "succeeded"
    glb = first.get(f"/v1/jobs/{job['job_id']}/result.glb").content
    manifest = first.get(f"/v1/jobs/{job['job_id']}/result.json").json()
    assert first.stop() == 0
    assert not (tmp_path / "data" / STATE_FILE_NAME).exists()  # clean shutdown removes the state file

    second = make_service(tmp_path / "data")
    assert second.state["token"] != first.state["token"]
    assert second.get(f"/v1/jobs/{job['job_id']}").json()["state"] == "succeeded"
    assert second.get(f"/v1/jobs/{job['job_id']}/result.glb").content == glb
    assert second.get(f"/v1/jobs/{job['job_id']}/result.json").json() == manifest
    assert [j["job_id"] for j in second.get("/v1/jobs").json()["jobs"]] == [job["job_id"]]
    (tmp_path / "data" / "jobs" / job["job_id"] / "result.glb").unlink()
    missing = second.get(f"/v1/jobs/{job['job_id']}/result.glb")
    assert missing.status_code == 409 and "missing" in missing.json()["detail"]


def test_job_of_a_killed_service_comes_back_failed(make_service, scene, tmp_path, tiny_model):
    first = make_service(tmp_path / "data")
    running = first.submit(scene["image"], seg=scene["seg"], settings={"steps": 200, "mesh_resolution": 32}).json()
    queued = first.submit(scene["image"], seg=scene["seg"], settings={"steps": 1}).json()
    first.wait(running["job_id"], until=("running",), condition=lambda s: s["step"] >= 1)
    first.kill()
    assert (tmp_path / "data" / STATE_FILE_NAME).exists()  # a crash leaves a stale state file behind

    second = make_service(tmp_path / "data")  # the stale state file (dead pid) does not block the start
    for job, message in ((running, INTERRUPTED_MESSAGE), (queued, NEVER_STARTED_MESSAGE)):
        status = second.get(f"/v1/jobs/{job['job_id']}").json()
        assert status["state"] == "failed" and status["message"] == message
        assert second.get(f"/v1/jobs/{job['job_id']}/result.glb").status_code == 409


def test_bad_model_at_start_is_a_clear_error(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "scenewright", "serve", "--port", "0", "--data-dir", str(tmp_path), "--model", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2 and "model_index.json" in result.stderr
    assert not (tmp_path / STATE_FILE_NAME).exists()


def test_data_dir_of_a_live_service_is_refused(tmp_path, tiny_model):
    # a state file naming a live process (this test's own) means another service owns the data dir
    (tmp_path / STATE_FILE_NAME).write_text(json.dumps({"pid": os.getpid(), "url": "http://127.0.0.1:1"}))
    result = subprocess.run(
        [sys.executable, "-m", "scenewright", "serve", "--port", "0", "--data-dir", str(tmp_path), "--model", str(tiny_model)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 1 and "already uses" in result.stderr
    assert json.loads((tmp_path / STATE_FILE_NAME).read_text())["pid"] == os.getpid()  # left alone


def _job_folders_once_pruned(jobs_dir: Path, expected: list[str], timeout: float = 30.0) -> list[str]:
    """The job folders once they are `expected` or `timeout` s have passed: the worker prunes right after a job
    ends, outside its lock, so a client that sees the job finished may look a moment before the prune."""
    deadline = time.monotonic() + timeout
    while (names := sorted(p.name for p in jobs_dir.iterdir())) != expected and time.monotonic() < deadline:
        time.sleep(0.1)
    return names


def test_old_finished_jobs_are_deleted_beyond_keep_jobs(make_service, scene, tmp_path):
    service = make_service(tmp_path / "data", extra_args=("--keep-jobs", "1"))
    first = service.submit(scene["image"], seg=scene["seg"], settings={"steps": 1, "mesh_resolution": 32}).json()
    assert service.wait(first["job_id"])["state"] == "succeeded"
    assert service.get(f"/v1/jobs/{first['job_id']}/result.glb").status_code == 200
    second = service.submit(scene["image"], seg=scene["seg"], settings={"steps": 1, "mesh_resolution": 32}).json()
    assert service.wait(second["job_id"])["state"] == "succeeded"
    jobs_dir = tmp_path / "data" / "jobs"
    assert _job_folders_once_pruned(jobs_dir, [second["job_id"]]) == [second["job_id"]]
    assert service.get(f"/v1/jobs/{first['job_id']}").status_code == 404
    assert [j["job_id"] for j in service.get("/v1/jobs").json()["jobs"]] == [second["job_id"]]
    assert service.stop() == 0


@pytest.mark.parametrize("value", ["0", "-1", "many"])
def test_keep_jobs_must_keep_at_least_one(tmp_path, value):
    """0 would delete every result before a client could fetch it."""
    result = subprocess.run([sys.executable, "-m", "scenewright", "serve", "--data-dir", str(tmp_path), "--keep-jobs", value],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "--keep-jobs" in result.stderr
    assert ("1 or more" in result.stderr) if value != "many" else ("not a whole number" in result.stderr)


@pytest.mark.parametrize("damage", [b"", b'{"job_id": "', b"[1, 2]", b'{"state": "exploded"}'])
def test_a_damaged_status_file_reads_as_a_failed_job_and_is_pruned(make_service, scene, tmp_path, damage):
    service = make_service(tmp_path / "data", extra_args=("--keep-jobs", "1"))
    job = service.submit(scene["image"], seg=scene["seg"], settings={"steps": 1, "mesh_resolution": 32}).json()
    service.wait(job["job_id"])
    (tmp_path / "data" / "jobs" / job["job_id"] / "status.json").write_bytes(damage)  # a power cut mid-write
    status = service.get(f"/v1/jobs/{job['job_id']}")
    assert status.status_code == 200 and status.json()["state"] == "failed"
    assert "damaged" in status.json()["message"] and "submit the job again" in status.json()["message"]
    for answer in (service.get(f"/v1/jobs/{job['job_id']}/result.glb"), service.post(f"/v1/jobs/{job['job_id']}/cancel")):
        assert answer.status_code == 409, answer.text
    assert job["job_id"] in [j["job_id"] for j in service.get("/v1/jobs").json()["jobs"]]
    newer = service.submit(scene["image"], seg=scene["seg"], settings={"steps": 1, "mesh_resolution": 32}).json()
    service.wait(newer["job_id"])
    jobs_dir = tmp_path / "data" / "jobs"
    assert _job_folders_once_pruned(jobs_dir, [newer["job_id"]]) == [newer["job_id"]]  # pruned like the others


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
def test_the_data_dir_is_private_to_the_user(make_service, scene, tmp_path):
    data = tmp_path / "data"
    (data / "jobs" / ("a" * 32)).mkdir(parents=True)  # left by an older version, world-readable
    (data / "jobs" / ("a" * 32) / "image.png").write_bytes(b"x")
    os.chmod(data, 0o755)
    service = make_service(data)
    job = service.submit(scene["image"], seg=scene["seg"], settings={"steps": 1, "mesh_resolution": 32}).json()
    service.wait(job["job_id"])
    for path in [data, *data.rglob("*")]:
        mode = path.stat().st_mode & 0o777
        assert mode & 0o077 == 0, f"{path} is {oct(mode)}"
