"""Results outlive the process; a crash mid-job leaves a failed job with the reason, not a stuck one."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from scenewright.protocol import STATE_FILE_NAME
from scenewright.service.storage import INTERRUPTED_MESSAGE


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
    for job in (running, queued):
        status = second.get(f"/v1/jobs/{job['job_id']}").json()
        assert status["state"] == "failed" and status["message"] == INTERRUPTED_MESSAGE
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


def test_old_finished_jobs_are_deleted_beyond_keep_jobs(make_service, scene, tmp_path):
    service = make_service(tmp_path / "data", extra_args=("--keep-jobs", "1"))
    first = service.submit(scene["image"], seg=scene["seg"], settings={"steps": 1, "mesh_resolution": 32}).json()
    assert service.wait(first["job_id"])["state"] == "succeeded"
    assert service.get(f"/v1/jobs/{first['job_id']}/result.glb").status_code == 200
    second = service.submit(scene["image"], seg=scene["seg"], settings={"steps": 1, "mesh_resolution": 32}).json()
    assert service.wait(second["job_id"])["state"] == "succeeded"
    jobs_dir = tmp_path / "data" / "jobs"
    assert sorted(p.name for p in jobs_dir.iterdir()) == [second["job_id"]]
    assert service.get(f"/v1/jobs/{first['job_id']}").status_code == 404
    assert [j["job_id"] for j in service.get("/v1/jobs").json()["jobs"]] == [second["job_id"]]
    assert service.stop() == 0

    # a restart with a lower limit prunes at start; 0 keeps no finished job
    again = make_service(tmp_path / "data", extra_args=("--keep-jobs", "0"))
    assert again.get("/v1/jobs").json()["jobs"] == [] and list(jobs_dir.iterdir()) == []


def test_keep_jobs_must_not_be_negative(tmp_path):
    result = subprocess.run([sys.executable, "-m", "scenewright", "serve", "--data-dir", str(tmp_path), "--keep-jobs", "-1"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "--keep-jobs" in result.stderr and "0 or more" in result.stderr
