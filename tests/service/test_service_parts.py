"""In-process checks of small service parts: job folders, mask files, out-of-memory errors (fast; no process)."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest
import torch
from PIL import Image

from scenewright.protocol import JobStatus
from scenewright.service.inputs import mask_pixels
from scenewright.service.model_manager import is_out_of_memory, out_of_memory_message
from scenewright.service.storage import INTERRUPTED_MESSAGE, NEVER_STARTED_MESSAGE, JobStore, UnknownJob, new_job_id


@pytest.mark.parametrize("job_id", [
    "../service", "..", "", "a" * 31, "a" * 33, "A" * 32, "g" * 32, "a" * 32 + "\n", "/" + "a" * 31, "a" * 16 + "/" + "a" * 15,
])
def test_malformed_job_ids_never_become_paths(tmp_path, job_id):
    with pytest.raises(UnknownJob):
        JobStore(tmp_path).job_dir(job_id)


def test_generated_ids_stay_inside_the_jobs_folder(tmp_path):
    store = JobStore(tmp_path)
    for _ in range(20):
        folder = store.job_dir(new_job_id())
        assert folder.parent == tmp_path / "jobs"


def test_interrupted_jobs_become_failed_and_finished_ones_stay(tmp_path):
    store = JobStore(tmp_path)
    states = {}
    for created, state in enumerate(("queued", "running", "succeeded", "cancelled")):
        status = JobStatus(job_id=new_job_id(), state=state, created_at=float(created))
        store.create(status, {"image.png": b"x"})
        states[status.job_id] = state
    failed = store.fail_interrupted()
    assert sorted(failed) == sorted(j for j, s in states.items() if s in ("queued", "running"))
    for job_id, state in states.items():
        status = store.read_status(job_id)
        if state in ("queued", "running"):
            expected = NEVER_STARTED_MESSAGE if state == "queued" else INTERRUPTED_MESSAGE
            assert status.state == "failed" and status.message == expected and status.finished_at
        else:
            assert status.state == state
    assert [s.created_at for s in store.list_statuses()] == [3.0, 2.0, 1.0, 0.0]  # newest first


def test_a_damaged_status_file_does_not_hide_the_other_jobs_and_reads_as_failed(tmp_path):
    store = JobStore(tmp_path)
    now = time.time()
    good = JobStatus(job_id=new_job_id(), state="succeeded", created_at=now)
    store.create(good, {})
    bad = JobStatus(job_id=new_job_id(), state="queued", created_at=now - 3600)
    store.create(bad, {})
    (tmp_path / "jobs" / bad.job_id / "status.json").write_text("{ truncated")
    os.utime(tmp_path / "jobs" / bad.job_id, (now - 3600, now - 3600))  # its age is all a damaged job has left
    listed = {s.job_id: s for s in store.list_statuses()}
    assert set(listed) == {good.job_id, bad.job_id} and listed[good.job_id].state == "succeeded"
    assert listed[bad.job_id].state == "failed" and "damaged" in listed[bad.job_id].message
    assert json.loads((tmp_path / "jobs" / good.job_id / "status.json").read_text())["state"] == "succeeded"
    assert store.prune(1) == [bad.job_id]  # finished (failed) like any other: pruned in turn


def test_out_of_memory_is_recognised_with_an_actionable_message():
    try:
        torch.empty(1 << 60, dtype=torch.uint8)  # the CPU allocator refuses: a real out-of-memory error
    except RuntimeError as exc:
        cpu_error = exc
    cuda_error = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
    for exc in (cpu_error, cuda_error):
        assert is_out_of_memory(exc)
        message = out_of_memory_message(exc)
        assert "fewer instances" in message and "mesh_resolution" in message and "/v1/models/unload" in message
    assert not is_out_of_memory(ValueError("mi_blocks [99] do not exist"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))


def test_mask_files_light_is_the_object_and_transparent_never_is():
    rgba = np.zeros((6, 8, 4), np.uint8)
    rgba[..., :3] = 255  # white everywhere, as exported by many editors
    rgba[1:4, 2:5, 3] = 255  # but opaque only on the object
    expected = np.zeros((6, 8), bool)
    expected[1:4, 2:5] = True
    assert (mask_pixels(Image.fromarray(rgba, "RGBA")) == expected).all()
    gray = (expected * 255).astype(np.uint8)
    assert (mask_pixels(Image.fromarray(gray)) == expected).all()
    assert (mask_pixels(Image.fromarray(gray).convert("1")) == expected).all()
    assert (mask_pixels(Image.fromarray(np.stack([gray] * 3, -1))) == expected).all()
