"""Mesh-extraction benchmark on an analytic scene: dense vs coarse-to-fine queries, time, Chamfer.

The analytic scene stands in for a decoded VAE field with a known surface: three
instances (batch rows) with exact signed distances, negative inside, the same
convention as the decoder.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from ..meshing import DEFAULT_BBOX_MAX, DEFAULT_BBOX_MIN, TriMeshData, extract_meshes, extract_meshes_dense

SCENE_ROWS = ("two spheres", "box", "torus")


def analytic_scene_field(points: torch.Tensor) -> torch.Tensor:
    """Signed distances (B, P) for points (B, P, 3), row b = SCENE_ROWS[b % 3]; negative inside."""
    rows = [_two_spheres, _box, _torus]
    return torch.stack([rows[b % 3](points[b].float()) for b in range(points.shape[0])])


def _two_spheres(p: torch.Tensor) -> torch.Tensor:
    a = (p - p.new_tensor([-0.3, 0.0, 0.05])).norm(dim=-1) - 0.45
    b = (p - p.new_tensor([0.42, 0.1, -0.1])).norm(dim=-1) - 0.3
    return torch.minimum(a, b)


def _box(p: torch.Tensor) -> torch.Tensor:
    q = p.abs() - p.new_tensor([0.7, 0.35, 0.5])
    return q.clamp(min=0).norm(dim=-1) + q.max(dim=-1).values.clamp(max=0)


def _torus(p: torch.Tensor) -> torch.Tensor:
    ring = torch.stack([p[..., :2].norm(dim=-1) - 0.6, p[..., 2]], dim=-1)
    return ring.norm(dim=-1) - 0.12


def chamfer_distance(a: TriMeshData, b: TriMeshData, samples: int = 20000, seed: int = 0) -> float:
    """Symmetric mean nearest-surface-sample distance between two meshes (same units as the vertices)."""
    import trimesh
    from scipy.spatial import cKDTree

    pa = trimesh.sample.sample_surface(trimesh.Trimesh(a.vertices, a.faces, process=False), samples, seed=seed)[0]
    pb = trimesh.sample.sample_surface(trimesh.Trimesh(b.vertices, b.faces, process=False), samples, seed=seed)[0]
    return float(0.5 * (cKDTree(pb).query(pa)[0].mean() + cKDTree(pa).query(pb)[0].mean()))


def run_extraction(resolution: int = 256, coarse_resolution: int | None = None) -> dict[str, Any]:
    """Dense and coarse-to-fine extraction of the analytic scene; counts, seconds, Chamfer per row."""
    rows = len(SCENE_ROWS)
    clock = time.perf_counter()
    dense = extract_meshes_dense(analytic_scene_field, rows, resolution)
    dense_s = time.perf_counter() - clock
    clock = time.perf_counter()
    fast = extract_meshes(analytic_scene_field, rows, resolution, coarse_resolution=coarse_resolution)
    fast_s = time.perf_counter() - clock
    box = float(np.max(np.subtract(DEFAULT_BBOX_MAX, DEFAULT_BBOX_MIN)))
    chamfer = [chamfer_distance(d, f) / box for d, f in zip(dense.meshes, fast.meshes)]
    return {
        "resolution": resolution,
        "rows": list(SCENE_ROWS),
        "dense_queries": dense.num_queries,
        "coarse_to_fine_queries": fast.num_queries,
        "query_ratio": dense.num_queries / fast.num_queries,
        "coarse_to_fine_calls": fast.num_calls,
        "dense_seconds": dense_s,
        "coarse_to_fine_seconds": fast_s,
        "chamfer_over_box": chamfer,
        "identical_meshes": all(
            np.array_equal(d.vertices, f.vertices) and np.array_equal(d.faces, f.faces)
            for d, f in zip(dense.meshes, fast.meshes)
        ),
    }


def format_extraction(result: dict[str, Any]) -> str:
    r = result
    return "\n".join([
        f"mesh extraction, analytic scene ({', '.join(r['rows'])}), {r['resolution']}^3 cells",
        f"  {'path':<16}{'queries':>14}{'seconds':>10}",
        f"  {'dense':<16}{r['dense_queries']:>14,}{r['dense_seconds']:>10.2f}",
        f"  {'coarse-to-fine':<16}{r['coarse_to_fine_queries']:>14,}{r['coarse_to_fine_seconds']:>10.2f}",
        f"  query ratio {r['query_ratio']:.1f}x; Chamfer / box size per row "
        + ", ".join(f"{c:.2e}" for c in r["chamfer_over_box"])
        + f"; identical meshes: {r['identical_meshes']}",
    ])
