"""The panel's operators and the command line against a real backend process, on the project's example cases."""

from __future__ import annotations

import json
import math
import shutil
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SCENE_SIZE_M = 3.0

CONFIGURE = '''
def configure(**prefs_values):
    bpy.ops.wm.read_homefile(use_empty=True)
    prefs = bpy.context.preferences.addons[EXT.__name__].preferences
    for key, value in prefs_values.items():
        setattr(prefs, key, value)
    return bpy.context.scene.scenewright

images = sys.modules[EXT.__name__ + ".images"]
'''

GENERATE_SCRIPT = CONFIGURE + '''
props = configure(backend_mode="REMOTE", url=PARAMS["url"], token=PARAMS["token"], data_dir=PARAMS["data_dir"])
props.reference_image = images.load_image(PARAMS["image"])
props.seg_image = images.load_image(PARAMS["seg"])
props.steps, props.mesh_resolution, props.seed, props.scene_size_m = 2, 32, 7, PARAMS["scene_size_m"]
outcome = bpy.ops.scenewright.generate()
job = props.jobs[0]
collection = bpy.data.collections[job.collection]
scene = bpy.context.scene
first = {"outcome": sorted(outcome), "state": job.state, "job_id": job.job_id, "result_dir": job.result_dir,
      "error": props.error, "collection": collection.name,
      "scene_collections": [c.name for c in scene.collection.children], "objects": describe(collection.objects),
      "scene_camera": scene.camera.name if scene.camera else None, "reference": props.reference_image.name,
      "render": [scene.render.resolution_x, scene.render.resolution_y]}
import shutil
shutil.rmtree(job.result_dir)  # re-import downloads the result again
reimport = bpy.ops.scenewright.import_job(job_id=job.job_id)
again = bpy.data.collections[props.jobs[0].collection]
done({**first, "reimport": sorted(reimport), "reimported": describe(again.objects), "reimport_collection": again.name,
      "collections_now": [c.name for c in scene.collection.children]})
'''


def _instance_ids(seg_path: Path) -> list[int]:
    seg = np.asarray(Image.open(seg_path).convert("L"))
    return [int(v) for v in np.unique(seg) if v != 0]


def test_generate_operator_imports_the_placed_scene(blender, backend, example_cases, tmp_path):
    case = example_cases[0]
    conn = backend.connection
    run = blender.run(GENERATE_SCRIPT, {"url": conn.url, "token": conn.token, "data_dir": str(tmp_path),
                                        "image": str(case / "image.png"), "seg": str(case / "seg.png"),
                                        "scene_size_m": SCENE_SIZE_M})
    out = run.result
    assert out["outcome"] == ["FINISHED"] and out["state"] == "succeeded" and out["error"] == ""
    manifest = json.loads((Path(out["result_dir"]) / "result.json").read_text())
    assert manifest["job_id"] == out["job_id"]
    assert sorted(inst["id"] for inst in manifest["instances"]) == _instance_ids(case / "seg.png")

    # one object per non-empty instance, named after its node, all in one new collection of the scene
    expected = sorted(inst["node"] for inst in manifest["instances"] if not inst["empty"])
    meshes = {name: o for name, o in out["objects"].items() if o["type"] == "MESH"}
    assert sorted(meshes) == expected and len(expected) >= 1
    assert out["scene_collections"] == [out["collection"]]
    for name, obj in meshes.items():
        assert obj["collections"] == [out["collection"]] and obj["mesh"] == name and obj["mesh_users"] == 1
        size = np.subtract(obj["local_max"], obj["local_min"])
        assert obj["local_min"][2] == pytest.approx(0.0, abs=1e-6 * size.max())  # origin at the bottom ...
        np.testing.assert_allclose(np.add(obj["local_min"][:2], obj["local_max"][:2]) / 2, 0.0, atol=1e-6 * size.max())
        assert obj["props"]["scenewright_job_id"] == out["job_id"] and obj["props"]["scenewright_seed"] == 7
        inst = next(i for i in manifest["instances"] if i["node"] == name)
        assert obj["props"]["scenewright_instance_id"] == inst["id"]
        assert json.loads(obj["props"]["scenewright_settings"])["steps"] == 2
    # ground contact and the requested scene size
    lows = np.array([o["world_min"] for o in meshes.values()])
    highs = np.array([o["world_max"] for o in meshes.values()])
    assert lows[:, 2].min() == pytest.approx(0.0, abs=1e-3 * SCENE_SIZE_M)
    footprint = highs[:, :2].max(0) - lows[:, :2].min(0)
    assert footprint.max() == pytest.approx(SCENE_SIZE_M, rel=0.02)

    cameras = [o for o in out["objects"].values() if o["type"] == "CAMERA"]
    assert manifest["camera"] is not None, "the backend returned no camera"
    assert len(cameras) == 1 and out["scene_camera"] is not None
    assert cameras[0]["angle"] == pytest.approx(math.radians(manifest["camera"]["fov_deg"]), rel=1e-6)
    np.testing.assert_allclose(cameras[0]["matrix_world"], manifest["camera"]["matrix_world"], atol=1e-5)
    assert cameras[0]["show_bg"] and cameras[0]["bg_image"] == out["reference"]
    assert out["render"] == list(Image.open(case / "image.png").size)

    # re-import from the job list: a second collection with the same objects in the same places
    assert out["reimport"] == ["FINISHED"] and out["reimport_collection"] != out["collection"]
    assert out["collections_now"] == [out["collection"], out["reimport_collection"]]
    again = {o["props"]["scenewright_instance_id"]: o for o in out["reimported"].values() if o["type"] == "MESH"}
    for obj in meshes.values():
        np.testing.assert_allclose(again[obj["props"]["scenewright_instance_id"]]["world_min"], obj["world_min"], atol=1e-6)
    assert "Traceback" not in run.stderr


BATCH_SCRIPT = CONFIGURE + '''
configure(backend_mode="REMOTE", data_dir=PARAMS["data_dir"])
cli = sys.modules[EXT.__name__ + ".cli"]
code = cli.main(["batch", "--input-dir", PARAMS["input"], "--out-dir", PARAMS["out"], "--url", PARAMS["url"],
                 "--token=" + PARAMS["token"], "--steps", "2", "--mesh-resolution", "32", "--seed", "3"])
summary = json.loads(open(PARAMS["out"] + "/summary.json").read())
reopened = {}
for case in summary["cases"]:
    if case["ok"]:
        bpy.ops.wm.open_mainfile(filepath=case["blend"])
        collection = bpy.data.collections[case["collection"]]
        reopened[case["name"]] = {"objects": describe(collection.objects),
                                  "camera": bpy.context.scene.camera.name if bpy.context.scene.camera else None}
done({"code": code, "summary": summary, "reopened": reopened})
'''


def test_cli_batch_continues_past_failures_and_writes_blends_that_reopen(blender, backend, example_cases, tmp_path):
    inputs = tmp_path / "inputs"
    for case in example_cases[1:3]:
        shutil.copytree(case, inputs / case.name, ignore=shutil.ignore_patterns("instances", "scene.json"))
    broken = inputs / "broken"
    broken.mkdir()
    (broken / "image.png").write_text("this is not a picture")
    shutil.copy(example_cases[1] / "seg.png", broken / "seg.png")
    conn = backend.connection
    run = blender.run(BATCH_SCRIPT, {"url": conn.url, "token": conn.token, "data_dir": str(tmp_path / "data"),
                                     "input": str(inputs), "out": str(tmp_path / "out")})
    out = run.result
    summary = out["summary"]
    assert out["code"] == 1  # one case failed
    assert (summary["succeeded"], summary["failed"]) == (2, 1)
    by_name = {case["name"]: case for case in summary["cases"]}
    assert "is not an image" in by_name["broken"]["error"] and by_name["broken"]["blend"] is None
    for case in example_cases[1:3]:
        entry = by_name[case.name]
        assert Path(entry["blend"]).is_file()
        reopened = out["reopened"][case.name]
        meshes = sorted(name for name, o in reopened["objects"].items() if o["type"] == "MESH")
        assert meshes == entry["objects"] and 1 <= len(meshes) <= len(_instance_ids(case / "seg.png"))
        assert reopened["camera"] == entry["camera"] and reopened["camera"] is not None
        assert all(o["props"]["scenewright_job_id"] == entry["job_id"] for o in reopened["objects"].values())
    assert "Traceback" not in run.stderr


ERRORS_SCRIPT = CONFIGURE + '''
def attempt(image, seg, **prefs_values):
    props = configure(**prefs_values)
    try:
        props.reference_image = images.load_image(image)
        props.seg_image = images.load_image(seg)
    except images.InputError as exc:  # what the panel's Open shows
        return {"raised": str(exc), "panel": str(exc)}
    props.steps, props.mesh_resolution = 2, 32
    try:
        bpy.ops.scenewright.generate()
    except RuntimeError as exc:  # an ERROR report from an operator run by Python
        return {"raised": str(exc), "panel": props.error, "jobs": [j.state for j in props.jobs]}
    return {"raised": None, "panel": props.error}

image, seg, data = PARAMS["image"], PARAMS["seg"], PARAMS["data_dir"]
cli = sys.modules[EXT.__name__ + ".cli"]
props = configure(backend_mode="REMOTE", url=PARAMS["url"], token=PARAMS["token"], data_dir=data)
props.mi_blocks = "8-12, 15"
parsed_blocks = props.generation_settings()["mi_blocks"]
props.mi_blocks = "8-x"
try:
    props.generation_settings()
except images.InputError as exc:
    bad_blocks = str(exc)
props = configure(backend_mode="REMOTE", url=PARAMS["closed_url"], token="x", data_dir=data)
props.reference_image, props.seg_image = images.load_image(image), images.load_image(seg)
for _ in range(23):
    try:
        bpy.ops.scenewright.generate()
    except RuntimeError:
        pass
done({"jobs_kept": len(props.jobs), "parsed_blocks": parsed_blocks, "bad_blocks": bad_blocks,
    "wrong_url": attempt(image, seg, backend_mode="REMOTE", url=PARAMS["closed_url"], token="x", data_dir=data),
    "wrong_token": attempt(image, seg, backend_mode="REMOTE", url=PARAMS["url"], token="not-the-token", data_dir=data),
    "stopped_backend": attempt(image, seg, backend_mode="LOCAL", auto_start=False, data_dir=PARAMS["stale_dir"]),
    "not_an_image": attempt(PARAMS["text_file"], seg, backend_mode="REMOTE", url=PARAMS["url"], token=PARAMS["token"],
                            data_dir=data),
    "cli_not_an_image": cli.main(["generate", "--image", PARAMS["text_file"], "--seg", seg, "--out",
                                  data + "/x.blend", "--url", PARAMS["url"], "--token=" + PARAMS["token"]]),
})
'''


def _closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_wrong_url_wrong_token_stopped_backend_and_non_image_give_clear_messages(blender, backend, example_cases, tmp_path):
    case = example_cases[1]
    closed = _closed_port_url()
    stale = tmp_path / "stale"  # a backend that died: its state file names a port nobody listens on
    stale.mkdir()
    (stale / "service.json").write_text(json.dumps({"url": closed, "pid": 999999, "token": "t"}))
    text_file = tmp_path / "notes.png"
    text_file.write_text("hello, not an image")
    conn = backend.connection
    run = blender.run(ERRORS_SCRIPT, {"url": conn.url, "token": conn.token, "closed_url": closed,
                                      "stale_dir": str(stale), "data_dir": str(tmp_path), "image": str(case / "image.png"),
                                      "seg": str(case / "seg.png"), "text_file": str(text_file)})
    out = run.result
    assert "no backend is running at" in out["wrong_url"]["raised"] and closed in out["wrong_url"]["panel"]
    assert out["wrong_url"]["jobs"] == ["error"]
    assert "refused the access token" in out["wrong_token"]["raised"]
    assert "refused the access token" in out["wrong_token"]["panel"]
    assert "local backend is not running" in out["stopped_backend"]["raised"]
    assert "Start Backend" in out["stopped_backend"]["panel"]
    assert "is not an image Blender can read" in out["not_an_image"]["raised"]
    assert out["cli_not_an_image"] == 1
    assert "scenewright: error:" in run.stderr and "is not an image Blender can read" in run.stderr
    assert out["jobs_kept"] == 20  # the job list keeps the recent ones
    assert out["parsed_blocks"] == [8, 9, 10, 11, 12, 15]
    assert "cannot read '8-x'" in out["bad_blocks"]
    assert "Traceback" not in run.stderr and "Traceback" not in run.stdout


LOCAL_SCRIPT = CONFIGURE + '''
import os
cli = sys.modules[EXT.__name__ + ".cli"]
data = PARAMS["data_dir"]
code = cli.main(["generate", "--image", PARAMS["image"], "--seg", PARAMS["seg"], "--out", data + "/scene.blend",
                 "--render", data + "/render.png", "--render-samples", "1", "--start-backend",
                 "--environment", PARAMS["python"], "--data-dir", data, "--backend-model", PARAMS["model"],
                 "--device", "cpu", "--steps", "2", "--mesh-resolution", "32"])
state_after_cli = os.path.exists(data + "/service.json")

configure(backend_mode="LOCAL", environment=PARAMS["python"], data_dir=data, model=PARAMS["model"], device="cpu")
wm = bpy.context.window_manager
bpy.ops.scenewright.start_backend()
started = wm.scenewright_backend_status
bpy.ops.scenewright.check_backend()
checked = wm.scenewright_backend_status
bpy.ops.scenewright.stop_backend()
stopped = wm.scenewright_backend_status
done({"code": code, "state_after_cli": state_after_cli, "started": started, "checked": checked, "stopped": stopped,
      "state_after_stop": os.path.exists(data + "/service.json")})
'''


@pytest.mark.slow
def test_local_backend_auto_start_render_and_stop(blender, tiny_model, example_cases, tmp_path):
    case = example_cases[1]
    run = blender.run(LOCAL_SCRIPT, {"image": str(case / "image.png"), "seg": str(case / "seg.png"),
                                     "data_dir": str(tmp_path), "python": sys.executable, "model": str(tiny_model)})
    out = run.result
    assert out["code"] == 0, run.stderr[-2000:]
    assert (tmp_path / "scene.blend").is_file()
    assert Image.open(tmp_path / "render.png").size == Image.open(case / "image.png").size
    assert "scenewright service on" in (tmp_path / "service.log").read_text()
    assert not out["state_after_cli"]  # the backend the command started was stopped again
    assert out["started"].startswith("Connected: SceneWright") and "device cpu" in out["checked"]
    assert out["stopped"] == "Stopped the local backend." and not out["state_after_stop"]


THREADED_SCRIPT = CONFIGURE + '''
import time
ops = sys.modules[EXT.__name__ + ".operators"]
props = configure(backend_mode="REMOTE", url=PARAMS["url"], token=PARAMS["token"], data_dir=PARAMS["data_dir"])
props.reference_image = images.load_image(PARAMS["image"])
props.seg_image = images.load_image(PARAMS["seg"])
props.mesh_resolution = 32
backend = bpy.context.preferences.addons[EXT.__name__].preferences.backend_settings()


def pump_until(condition, timeout=120):
    """What Blender's timer does between redraws (tests/blender/bench_main_thread.py times these ticks)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out: {props.jobs[0].state} {props.jobs[0].stage} {props.error}"
        ops._pump()
        time.sleep(0.05)


props.steps = 2
ops.start_generation(bpy.context, backend, blocking=False)
states_seen = set()
pump_until(lambda: states_seen.add(props.jobs[0].state) or not ops._tasks)
finished = {"state": props.jobs[0].state, "collection": props.jobs[0].collection, "seen": sorted(states_seen)}

props.steps = 200
ops.start_generation(bpy.context, backend, blocking=False)
pump_until(lambda: props.jobs[0].state == "running" and props.jobs[0].stage == "denoise")
bpy.ops.scenewright.cancel(job=props.jobs[0].key)  # what the panel's Cancel button does
pump_until(lambda: not ops._tasks)
done({"finished": finished, "cancelled": {"state": props.jobs[0].state, "error": props.error,
      "step": props.jobs[0].step, "total": props.jobs[0].total}, "collections": len(bpy.data.collections),
      "cancel_again": sorted(bpy.ops.scenewright.cancel())})
'''


@pytest.mark.slow
def test_worker_thread_path_applies_results_on_the_main_thread_and_cancel_stops_the_job(blender, backend,
                                                                                         example_cases, tmp_path):
    """The interactive path: network in a worker thread, results applied by the timer tick, Cancel."""
    case = example_cases[1]
    conn = backend.connection
    out = blender.run(THREADED_SCRIPT, {"url": conn.url, "token": conn.token, "data_dir": str(tmp_path),
                                        "image": str(case / "image.png"), "seg": str(case / "seg.png")}).result
    finished = out["finished"]
    assert finished["state"] == "succeeded" and finished["collection"]
    assert "running" in finished["seen"]  # progress arrived while the worker waited
    cancelled = out["cancelled"]
    assert cancelled["state"] == "cancelled" and "cancelled" in cancelled["error"]
    assert cancelled["step"] < cancelled["total"] == 200
    assert out["collections"] == 1  # nothing imported for the cancelled job
    assert out["cancel_again"] == ["CANCELLED"]  # nothing left to cancel


DEMO_SCRIPT = CONFIGURE + '''
cli = sys.modules[EXT.__name__ + ".cli"]
data = PARAMS["data_dir"]
code = cli.main(["generate", "--image", PARAMS["image"], "--seg", PARAMS["seg"], "--out", data + "/scene.blend",
                 "--render", data + "/render.png", "--render-samples", "16", "--start-backend",
                 "--environment", PARAMS["python"], "--data-dir", data, "--backend-model", "default", "--device", "cpu",
                 "--ground", "--labels", PARAMS["labels"]])
collection = next(c for c in bpy.data.collections if c.name.startswith("SceneWright"))
done({"code": code, "objects": describe(collection.objects),
      "outside": sorted(o.name for o in bpy.data.objects if collection.name not in [c.name for c in o.users_collection])})
'''


@pytest.mark.slow
def test_demo_with_the_default_model_looks_like_the_reference(blender, example_cases, tmp_path):
    """The demo's path on the shipped model: objects named after their labels, coloured like their pixels, under
    the face budget, everything in the result's collection, and a render whose colour in every instance's
    mask region is close to the reference's."""
    case = example_cases[0]
    entries = sorted(json.loads((case / "scene.json").read_text())["instances"], key=lambda e: e["id"])
    labels = [e["label"] for e in entries]
    run = blender.run(DEMO_SCRIPT, {"image": str(case / "image.png"), "seg": str(case / "seg.png"),
                                    "data_dir": str(tmp_path), "python": sys.executable, "labels": ",".join(labels)},
                      timeout=600)
    out = run.result
    assert out["code"] == 0, run.stderr[-2000:]
    assert out["outside"] == []  # camera, sun and ground live in the result's collection too
    meshes = {name: o for name, o in out["objects"].items() if o["type"] == "MESH" and name != "SceneWright ground"}
    assert sorted(o["props"]["scenewright_label"] for o in meshes.values()) == sorted(labels)
    reference = np.asarray(Image.open(case / "image.png").convert("RGB"), np.float64)
    render = np.asarray(Image.open(tmp_path / "render.png").convert("RGB"), np.float64)
    seg = np.asarray(Image.open(case / "seg.png").convert("L"))
    for entry, (name, obj) in zip(entries, sorted(meshes.items(), key=lambda item: item[1]["props"]["scenewright_instance_id"])):
        mask = seg == entry["id"]
        core = mask & np.roll(mask, 1, 0) & np.roll(mask, -1, 0) & np.roll(mask, 1, 1) & np.roll(mask, -1, 1)
        expected = reference[core].mean(axis=0)
        base = np.asarray(obj["materials"][0]["base"][:3])
        srgb = np.where(base <= 0.0031308, base * 12.92, 1.055 * base ** (1 / 2.4) - 0.055) * 255
        assert np.abs(srgb - expected).max() <= 5.0, (name, srgb, expected)  # the material: the masked mean
        assert obj["faces"] <= 3000
        difference = np.abs(render[mask].mean(axis=0) - reference[mask].mean(axis=0)).max()
        assert difference <= 20.0, (name, difference)  # the render in the instance's region
