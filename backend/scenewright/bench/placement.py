"""Placement benchmark: camera solve and contacts on benchmark cases with ground-truth meshes.

For every case: the GT meshes go to the view frame, then through a random
similarity (scale and translation, to show the solve does not depend on the
frame's origin and scale), `solve_camera` fits them to the case's masks, and
PRED/<case>/<k>.ply + camera.json are written in that random frame (score them
with `scenewright eval`). Reproj-IoU is also computed here with the evaluator's
function. For contacts, each instance is first moved up or down by up to
`--jitter` of the scene size (as an imperfect prediction would be), then
`place_scene` stands it back on its support; the distance to the GT support is
measured in the placed scene.

    scenewright bench placement ../shared/benchmark/dev --out runs/placement
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

from ..camera import Camera, render_silhouettes, view_frame_transform
from ..evaluation.cases import list_cases, load_case, write_prediction
from ..evaluation.metrics import reprojection_ious, sample_surface
from ..placement import camera_from_params, place_scene, solve_camera


def raster_timing(meshes: int = 8, repeats: int = 5) -> dict[str, float]:
    """Median wall and CPU seconds of render_silhouettes for `meshes` spheres of about 10k triangles each at 512x512."""
    import trimesh

    sphere = trimesh.creation.uv_sphere(radius=1.0, count=[40, 64])  # about 10k triangles
    faces = np.asarray(sphere.faces)
    scene = [(np.asarray(sphere.vertices) * 0.6 + [2.0 * (k % 4) - 3.0, 8.0 + 2.0 * (k // 4), 0.6], faces) for k in range(meshes)]
    camera = camera_from_params(20.0, 50.0, (0.0, 0.0, 2.0), (512, 512))
    seconds = []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        render_silhouettes(scene, camera)
        seconds.append((time.perf_counter() - start, time.process_time() - start_cpu))
    wall, cpu = np.median(seconds, axis=0)
    return {"meshes": meshes, "triangles_per_mesh": len(faces), "resolution": 512, "median_s": float(wall), "median_cpu_s": float(cpu)}


def _subdivided(mesh: tuple[np.ndarray, np.ndarray], min_faces: int) -> tuple[np.ndarray, np.ndarray]:
    """The mesh split into 4x as many triangles until it has at least `min_faces` (same surface)."""
    import trimesh

    if len(mesh[1]) >= min_faces:
        return mesh
    tri = trimesh.Trimesh(mesh[0], mesh[1], process=False)
    while len(tri.faces) < min_faces:
        tri = tri.subdivide()
    return np.asarray(tri.vertices), np.asarray(tri.faces)


def _perturbed(
    mesh: tuple[np.ndarray, np.ndarray], amount: float, scene_size: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """The mesh scaled per axis about its box centre by up to 3 x `amount`, shifted by up to `amount` x scene size."""
    if amount <= 0.0:
        return mesh
    vertices = mesh[0]
    centre = (vertices.min(axis=0) + vertices.max(axis=0)) / 2.0
    stretch = rng.uniform(1.0 - 3.0 * amount, 1.0 + 3.0 * amount, 3)
    return (vertices - centre) * stretch + centre + rng.uniform(-amount, amount, 3) * scene_size, mesh[1]


def _support_distance(placement, index: dict[int, int], inst_id: int, support: int | None) -> float:
    """Distance in metres between an instance and its GT support (the ground z = 0 or the other mesh's surface)."""
    inst = placement.instances[index[inst_id]]
    vertices = inst.vertices + inst.transform[:3, 3]
    if support is None:
        return abs(float(vertices[:, 2].min()))
    other = placement.instances[index[support]]
    points = sample_surface((vertices, inst.faces), 4096, (0, inst_id))
    other_points = sample_surface((other.vertices + other.transform[:3, 3], other.faces), 8192, (1, support))
    return float(cKDTree(other_points).query(points)[0].min())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scenewright bench placement", description=__doc__.split("\n")[0])
    parser.add_argument("cases", type=Path, help="folder of benchmark cases (e.g. ../shared/benchmark/dev)")
    parser.add_argument("--out", type=Path, required=True, help="writes PRED/<case>/ and placement.json here")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jitter", type=float, default=0.01, help="vertical perturbation before place_scene, fraction of scene size")
    parser.add_argument("--limit", type=int, default=None, help="only the first N cases")
    parser.add_argument("--case", action="append", default=None, help="only this case (repeatable)")
    parser.add_argument("--perturb", type=float, default=0.0,
                        help="imitate prediction errors: per-instance scale noise up to 3x this, shift up to this x scene size")
    parser.add_argument("--min-faces", type=int, default=0, help="subdivide GT meshes to at least this many faces (prediction-sized meshes)")
    args = parser.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    per_case, ious, bound_ious, contacts, times = [], [], [], [], []
    paths = [p for p in list_cases(args.cases) if args.case is None or p.name in args.case]
    for path in paths[: args.limit]:
        case = load_case(path)
        ids = [inst.id for inst in case.instances]
        scale, offset = float(np.exp(rng.uniform(np.log(0.2), np.log(5.0)))), rng.uniform(-5.0, 5.0, 3)
        scene_size = float(np.ptp(np.concatenate([inst.mesh[0] for inst in case.instances]), axis=0).max())
        meshes = [_subdivided(inst.mesh, args.min_faces) for inst in case.instances]
        meshes = [_perturbed(m, args.perturb, scene_size, rng) for m in meshes]
        meshes = [(v * scale + offset, f) for v, f in meshes]
        masks = [case.seg == i for i in ids]
        size = (case.seg.shape[1], case.seg.shape[0])

        start, start_cpu = time.perf_counter(), time.process_time()
        camera, diagnostics = solve_camera(meshes, masks, size)
        solve_s, solve_cpu_s = time.perf_counter() - start, time.process_time() - start_cpu
        write_prediction(args.out / "PRED" / case.name, dict(zip(ids, meshes)), camera.to_dict(), {"time_s": solve_s, "device": "cpu"})
        case_ious = reprojection_ious(case.seg, ids, dict(zip(ids, meshes)), camera)
        # The true camera in the same frame: the bound set by occlusion (masks are occluded, silhouettes are not).
        true_matrix = view_frame_transform(case.camera.matrix_world) @ case.camera.matrix_world
        true_matrix[:3, 3] = true_matrix[:3, 3] * scale + offset
        true_camera = Camera(true_matrix, case.camera.fov_deg, case.camera.resolution, case.camera.sensor_fit)
        bound_ious += list(reprojection_ious(case.seg, ids, dict(zip(ids, meshes)), true_camera).values())

        extent = float((np.concatenate([m[0] for m in meshes]).ptp(axis=0)).max())
        jittered = [(v + [0.0, 0.0, rng.uniform(-1.0, 1.0) * args.jitter * extent], f) for v, f in meshes]
        placement = place_scene(jittered, masks, size, ids=ids, camera=camera)
        index = {inst_id: k for k, inst_id in enumerate(ids)}
        placed = np.concatenate([p.vertices + p.transform[:3, 3] for p in placement.instances])
        scene_m = float(placed.ptp(axis=0).max())
        case_contacts = {}
        for inst in case.instances:
            distance = _support_distance(placement, index, inst.id, inst.support)
            case_contacts[inst.id] = {
                "gt_support": inst.support,
                "found_support": placement.instances[index[inst.id]].support,
                "distance_rel": distance / scene_m,
            }
        ious += list(case_ious.values())
        contacts += list(case_contacts.values())
        times.append((solve_s, solve_cpu_s))
        per_case.append({
            "case": case.name, "reproj_iou": case_ious, "solve_s": solve_s, "solve_cpu_s": solve_cpu_s, "contacts": case_contacts,
            "fov_deg": [diagnostics["fov_deg"], case.camera.fov_deg], "pitch_deg": diagnostics["pitch_deg"],
        })
        print(f"{case.name}: Reproj-IoU {np.mean(list(case_ious.values())):.3f}  solve {solve_s:.2f} s (cpu {solve_cpu_s:.2f} s)  "
              f"max contact error {max(c['distance_rel'] for c in case_contacts.values()):.4f}", flush=True)

    distances = np.array([c["distance_rel"] for c in contacts])
    summary = {
        "cases": len(per_case),
        "instances": len(ious),
        "seed": args.seed,
        "jitter": args.jitter,
        "reproj_iou_mean": float(np.mean(ious)),
        "reproj_iou_true_camera_mean": float(np.mean(bound_ious)),
        "min_faces": args.min_faces,
        "perturb": args.perturb,
        "solve_s_median": float(np.median([t[0] for t in times])),
        "solve_s_max": float(np.max([t[0] for t in times])),
        "solve_cpu_s_median": float(np.median([t[1] for t in times])),
        "solve_cpu_s_max": float(np.max([t[1] for t in times])),
        "contact_error_rel_mean": float(distances.mean()),
        "contact_error_rel_max": float(distances.max()),
        "contacts_within_2pct": float(np.mean(distances <= 0.02)),
        "support_found_correctly": float(np.mean([c["gt_support"] == c["found_support"] for c in contacts])),
        "raster": {"one_mesh": raster_timing(1), "eight_meshes": raster_timing(8)},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "placement.json").write_text(json.dumps({"summary": summary, "cases": per_case}, indent=1))
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
