"""The shape codec's library: the coefficients of clean procedural objects of every family.

Each object (`data.shapes.make_shape`, half of the primitives at prop size) is normalised per axis
to the unit cube and turned into the codec's signed-distance grid, which is then put in each of its
4 quarter turns about +Z and mirrored, as the codec's canonical frame may hold the object (a quarter
turn of a grid normalised per axis is a rotation of its samples: exact, and one grid per object), and
projected on the codec's basis.
`ShapeCodec.alternatives` decodes a sampled shape's nearest library shapes in its pose, for the placement to
choose from by their silhouettes.
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from typing import Callable

import numpy as np
import torch

from ..data.shapes import FAMILIES, PRIMITIVES, PROP_SIZE, make_shape
from ..models.shape_codec import ShapeCodec
from .shape_grids import sdf_grid

VARIANTS = 8  # 4 quarter turns, each as it is and mirrored
# a shape within this squared grid distance of one kept before it is the same shape (a symmetric object's turns
# and mirror images; sampling noise is about 1e-4) and is left out: three quarters of them, 1 MB less
DUPLICATE_DISTANCE = 0.01


def family_grids(family: int, count: int, seed: int, resolution: int, truncation: float) -> np.ndarray:
    """The grids of `count` objects of FAMILIES[family] in every variant: (count * VARIANTS, R^3) float32.
    Seeded per family, so the library does not depend on how the families are spread over processes."""
    label = FAMILIES[family]
    rng = np.random.default_rng([seed, family])
    grids = []
    for i in range(count):
        size = float(rng.uniform(*PROP_SIZE)) if label in PRIMITIVES and i % 2 else None
        shape = make_shape(label, rng, size)
        vertices, faces = np.asarray(shape.mesh.vertices, np.float64), np.asarray(shape.mesh.faces, np.int64)
        low, high = vertices.min(axis=0), vertices.max(axis=0)
        grid = sdf_grid((vertices - (low + high) / 2) / np.maximum(high - low, 1e-9), faces, resolution, truncation, rng)
        for quarter in range(4):  # +90 degrees about +Z: (x, y) -> (-y, x), so sample (i, j) <- (j, R - 1 - i)
            turned = np.rot90(grid, quarter, axes=(0, 1))
            grids += [np.ascontiguousarray(turned).reshape(-1), np.ascontiguousarray(turned[::-1]).reshape(-1)]
    return np.stack(grids).astype(np.float32)


def build_library(codec: ShapeCodec, objects_per_family: int, seed: int, workers: int = 1,
                  progress: Callable[[str, int], None] | None = None) -> torch.Tensor:
    """Whitened coefficients (M, K) of the library's distinct shapes: of each family's objects * VARIANTS,
    those not within DUPLICATE_DISTANCE of one before them."""
    config = codec.config
    task = [(family, objects_per_family, seed, config.grid_resolution, config.truncation) for family in range(len(FAMILIES))]
    out = []
    with ProcessPoolExecutor(max_workers=max(1, workers)) as pool:
        for family, grids in enumerate(pool.map(family_grids, *zip(*task))):
            with torch.no_grad():
                out.append(_distinct(codec.project(torch.from_numpy(grids)), codec))
            if progress is not None:
                progress(FAMILIES[family], len(out[-1]))
    return torch.cat(out)


def _distinct(coefficients: torch.Tensor, codec: ShapeCodec) -> torch.Tensor:
    """The rows not within DUPLICATE_DISTANCE (`ShapeCodec.grid_distances`) of an earlier kept row."""
    distance = codec.grid_distances(coefficients, coefficients)
    earlier = torch.tril(distance < DUPLICATE_DISTANCE, diagonal=-1)
    keep = torch.ones(len(coefficients), dtype=torch.bool)
    for i in range(len(coefficients)):  # a row is left out only for a kept one before it
        keep[i] = not bool((earlier[i] & keep).any())
    return coefficients[keep]


def add_library(codec: ShapeCodec, library: torch.Tensor) -> ShapeCodec:
    """A copy of `codec` that carries `library` (its config and buffer set)."""
    config = type(codec.config).from_dict({**codec.config.to_dict(), "library_size": len(library)})
    out = ShapeCodec(config)
    state = {k: v for k, v in codec.state_dict().items() if k != "library"}
    out.load_state_dict({**state, "library": library.to(codec.basis.dtype)})
    return out.to(codec.basis.dtype).eval()
