"""Jobs through the real service process: submit, poll, download, parse; cancel; models; the API surface."""

from __future__ import annotations

import io
import json
import os
import stat
import time

import numpy as np
import pytest
import trimesh
from .servicekit import png_bytes, scene_arrays

from scenewright.protocol import ENDPOINTS, PROTOCOL_VERSION, ResultManifest


def glb_node_names(data: bytes) -> set[str]:
    scene = trimesh.load(io.BytesIO(data), file_type="glb", force="scene")
    return {node for node in scene.graph.nodes_geometry}


def check_result(service, job_id: str, instance_ids: list[int]) -> ResultManifest:
    response = service.get(f"/v1/jobs/{job_id}/result.json")
    assert response.status_code == 200, response.text
    manifest = ResultManifest.from_dict(response.json())
    assert manifest.job_id == job_id
    assert [inst.id for inst in manifest.instances] == instance_ids
    for inst in manifest.instances:
        matrix = np.asarray(inst.transform)
        assert matrix.shape == (4, 4) and np.isfinite(matrix).all() and np.allclose(matrix[3], [0, 0, 0, 1])
    glb = service.get(f"/v1/jobs/{job_id}/result.glb")
    assert glb.status_code == 200 and glb.headers["content-type"] == "model/gltf-binary"
    nodes = glb_node_names(glb.content)
    assert nodes == {inst.node for inst in manifest.instances if not inst.empty}
    assert len(nodes) == len({inst.node for inst in manifest.instances}) - sum(inst.empty for inst in manifest.instances)
    return manifest


def test_state_file_and_health(service):
    state_path = service.data_dir / "service.json"
    assert set(service.state) == {"url", "pid", "token", "protocol_version", "started_at"}
    assert service.state["url"].startswith("http://127.0.0.1:") and service.port > 0
    assert service.state["pid"] == service.proc.pid
    if os.name == "posix":
        assert stat.S_IMODE(state_path.stat().st_mode) == 0o600
    health = service.get("/v1/health").json()
    assert health["protocol_version"] == PROTOCOL_VERSION == service.state["protocol_version"]
    assert health["device"] == "cpu" and health["status"] == "ok"


def test_openapi_lists_exactly_the_protocol_endpoints(service):
    spec = service.get("/openapi.json").json()
    served = {f"{method.upper()} {path}" for path, ops in spec["paths"].items() for method in ops}
    assert served == set(ENDPOINTS.values())


def test_seg_job_round_trip(service, scene):
    response = service.submit(scene["image"], seg=scene["seg"], settings={"steps": 3, "mesh_resolution": 32, "seed": 7})
    assert response.status_code == 202, response.text
    status = response.json()
    assert status["state"] in ("queued", "running") and status["num_instances"] == 3
    assert status["settings"]["seed"] == 7
    final = service.wait(status["job_id"])
    assert final["state"] == "succeeded", final["message"]
    assert final["stage"] == "done" and final["finished_at"] >= final["created_at"]
    assert {"encode", "denoise", "decode", "total"} <= set(final["timings"])
    manifest = check_result(service, status["job_id"], [1, 2, 3])
    assert manifest.settings["seed"] == 7
    listed = service.get("/v1/jobs").json()["jobs"]
    assert status["job_id"] in [job["job_id"] for job in listed]
    folder = service.data_dir / "jobs" / status["job_id"]
    expected = {"image.png", "seg.png", "settings.json", "status.json", "result.glb", "result.json"}
    assert expected <= {p.name for p in folder.iterdir()}


def test_masks_job_round_trip(service, scene):
    response = service.submit(scene["image"], masks=scene["masks"][:2], settings={"steps": 2, "mesh_resolution": 32})
    assert response.status_code == 202, response.text
    final = service.wait(response.json()["job_id"])
    assert final["state"] == "succeeded", final["message"]
    check_result(service, final["job_id"], [1, 2])


def test_progress_is_reported_and_cancel_really_stops(service, scene):
    long_job = service.submit(scene["image"], seg=scene["seg"], settings={"steps": 200, "mesh_resolution": 32}).json()
    queued_job = service.submit(scene["image"], seg=scene["seg"], settings={"steps": 2, "mesh_resolution": 32}).json()
    running = service.wait(long_job["job_id"], until=("running",), condition=lambda s: s["stage"] == "denoise" and s["step"] >= 2)
    assert running["total"] == 200

    # the second job waits behind the first: cancelling it is immediate
    cancelled = service.post(f"/v1/jobs/{queued_job['job_id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"

    response = service.post(f"/v1/jobs/{long_job['job_id']}/cancel")
    assert response.status_code == 200, response.text
    final = service.wait(long_job["job_id"], timeout=60)
    assert final["state"] == "cancelled" and final["step"] < 200
    time.sleep(1.0)
    after = service.get(f"/v1/jobs/{long_job['job_id']}").json()
    assert (after["state"], after["step"]) == ("cancelled", final["step"])  # really stopped
    assert service.get(f"/v1/jobs/{queued_job['job_id']}").json()["state"] == "cancelled"
    assert not (service.data_dir / "jobs" / long_job["job_id"] / "result.glb").exists()

    again = service.post(f"/v1/jobs/{long_job['job_id']}/cancel")
    assert again.status_code == 409 and "already finished" in again.json()["detail"]
    no_result = service.get(f"/v1/jobs/{long_job['job_id']}/result.glb")
    assert no_result.status_code == 409 and "cancelled" in no_result.json()["detail"]

    # the worker goes on with the next job
    next_job = service.submit(scene["image"], seg=scene["seg"], settings={"steps": 1, "mesh_resolution": 32}).json()
    assert service.wait(next_job["job_id"])["state"] == "succeeded"


@pytest.mark.parametrize("job_id, status", [("0" * 32, {404}), ("0" * 31, {422}), ("G" * 32, {422}),
                                            ("..", {404, 422}), ("..%2F..%2Fservice.json", {404, 422}),
                                            ("%2e%2e", {404, 422})])
def test_unknown_job_ids_are_404_and_malformed_ones_422(service, job_id, status):
    """A well-formed unknown id is 404; one that is not 32 lowercase hex characters is refused as malformed (422,
    naming the pattern) or, once the client or router resolved its dots, reaches no job route (404)."""
    for path in ("", "/result.json", "/result.glb", "/cancel"):
        response = (service.post if path == "/cancel" else service.get)(f"/v1/jobs/{job_id}{path}")
        assert response.status_code in status, (job_id, path, response.text)
        assert "token" not in response.text
        if response.status_code == 422:
            assert "^[0-9a-f]{32}$" in response.json()["detail"]


def test_models_list_unload_load(service, scene, tiny_model):
    listing = service.get("/v1/models").json()
    ids = [m["id"] for m in listing["models"]]
    assert str(tiny_model.resolve()) in ids and listing["default"] == str(tiny_model.resolve())

    health = service.post("/v1/models/unload").json()
    assert health["model"] is None
    assert service.get("/v1/models").json()["loaded"] is None

    health = service.post("/v1/models/load", json={"model": str(tiny_model)}).json()
    assert health["model"] == str(tiny_model.resolve())
    assert [m["loaded"] for m in service.get("/v1/models").json()["models"] if m["id"] == health["model"]] == [True]

    unknown = service.post("/v1/models/load", json={"model": "no such model!"})
    assert unknown.status_code == 404 and "neither a folder nor a hub repo id" in unknown.json()["detail"]
    not_a_model = service.post("/v1/models/load", json={"model": str(service.data_dir)})
    assert not_a_model.status_code == 404 and "model_index.json" in not_a_model.json()["detail"]
    no_home = service.post("/v1/models/load", json={"model": "~no-such-user-h5/model"})
    assert no_home.status_code == 404 and "unknown model" in no_home.json()["detail"]
    offline_hub = service.post("/v1/models/load", json={"model": "nobody-here/no-such-model"})
    assert offline_hub.status_code == 404 and "HF_HUB_OFFLINE" in offline_hub.json()["detail"]
    assert service.get("/v1/health").json()["model"] == str(tiny_model.resolve())  # failed loads change nothing

    # a job after an unload loads the model again by itself
    service.post("/v1/models/unload")
    settings = {"steps": 1, "mesh_resolution": 32, "model": str(tiny_model)}
    job = service.submit(scene["image"], seg=scene["seg"], settings=settings).json()
    assert service.wait(job["job_id"])["state"] == "succeeded"


def test_failed_generation_keeps_the_worker(service, scene):
    # block 99 does not exist in the tiny model: the job fails with the reason, the next one runs
    bad = service.submit(scene["image"], seg=scene["seg"], settings={"steps": 1, "mi_blocks": [99]}).json()
    final = service.wait(bad["job_id"])
    assert final["state"] == "failed" and "mi_blocks" in final["message"]
    good = service.submit(scene["image"], seg=scene["seg"], settings={"steps": 1, "mesh_resolution": 32}).json()
    assert service.wait(good["job_id"])["state"] == "succeeded"


def test_other_image_and_seg_encodings(service):
    rgb, seg = scene_arrays(2)
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=-1)
    rgba[:4, :, 3] = 0  # a transparent band: the pipeline puts it on white
    colour_seg = np.stack([seg * 100, seg * 50, seg * 20], axis=-1).astype(np.uint8)  # RGB map, two distinct grays
    response = service.submit(png_bytes(rgba), seg=png_bytes(colour_seg), settings={"steps": 1, "mesh_resolution": 32})
    assert response.status_code == 202, response.text
    assert response.json()["num_instances"] == 2
    final = service.wait(response.json()["job_id"])
    assert final["state"] == "succeeded"
    assert json.loads((service.data_dir / "jobs" / final["job_id"] / "settings.json").read_text())["steps"] == 1


def test_a_result_with_no_surface_is_a_failed_job_that_says_what_to_try(service, scene, tmp_path_factory):
    """Every instance decodes empty: a clear outcome (no GLB can hold nothing), not an internal error."""
    from scenewright.pipeline import make_tiny_random_pipeline

    empty_model = make_tiny_random_pipeline(tmp_path_factory.mktemp("empty-model") / "m", inside_fraction=0.0)
    assert service.post("/v1/models/load", json={"model": str(empty_model)}).status_code == 200
    try:
        settings = {"steps": 1, "mesh_resolution": 32, "model": str(empty_model)}
        job = service.submit(scene["image"], seg=scene["seg"], settings=settings).json()
        final = service.wait(job["job_id"])
        assert final["state"] == "failed" and "came out with a surface" in final["message"]
        assert "another seed" in final["message"] and "Error" not in final["message"]
    finally:
        service.post("/v1/models/load", json={"model": str(service.model)})
