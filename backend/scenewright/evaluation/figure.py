"""A results figure: per case the input image, its instance masks, and the predicted instances seen through the reported camera.

Run as `python -m scenewright.evaluation.figure --cases DIR --pred PRED --out fig.png [--case NAME ...]`.
Instances are drawn as silhouettes from far to near (painter's order by the
depth of their centres) in the colour of their mask, with a dark outline, so
a misplaced or missing object shows at a glance.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from ..camera import Camera, render_silhouettes
from .cases import Prediction, list_cases, load_case, load_prediction
from .metrics import is_empty

PANEL = 256
BACKGROUND = (245, 245, 245)
OUTLINE = (40, 40, 40)


def palette(k: int) -> tuple[int, int, int]:
    """A distinct, stable colour for instance id k (golden-angle hues)."""
    hue = (k * 0.618033988749895) % 1.0
    rgb = np.clip(np.abs((hue * 6.0 + np.array([0.0, 4.0, 2.0])) % 6.0 - 3.0) - 1.0, 0.0, 1.0)
    return tuple(int(40 + 200 * c) for c in rgb)


def colour_masks(seg: np.ndarray) -> np.ndarray:
    out = np.full(seg.shape + (3,), BACKGROUND, np.uint8)
    for k in np.unique(seg[seg > 0]):
        out[seg == k] = palette(int(k))
    return out


def render_prediction(pred: Prediction, size: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8: the predicted instances through the reported camera; a grey panel without a camera."""
    width, height = size
    out = np.full((height, width, 3), BACKGROUND, np.uint8)
    if pred.camera is None:
        out[:] = 200
        return out
    camera = Camera(pred.camera.matrix_world, pred.camera.fov_deg, (width, height), pred.camera.sensor_fit)
    ids = [k for k, m in sorted(pred.meshes.items()) if not is_empty(m)]
    if not ids:
        return out
    sils = render_silhouettes([pred.meshes[k] for k in ids], camera)
    depth = [camera.project(pred.meshes[k][0].mean(axis=0, keepdims=True))[1][0] for k in ids]
    for i in np.argsort(depth)[::-1]:
        sil = sils[i]
        out[sil] = palette(ids[i])
        out[sil & ~ndimage.binary_erosion(sil)] = OUTLINE
    return out


def case_row(case_dir: Path, pred_dir: Path) -> Image.Image:
    case = load_case(case_dir)
    height, width = case.seg.shape
    panels = [
        Image.open(case.image_path).convert("RGB"),
        Image.fromarray(colour_masks(case.seg)),
        Image.fromarray(render_prediction(load_prediction(pred_dir / case.name), (width, height))),
    ]
    row = Image.new("RGB", (3 * PANEL, PANEL), (255, 255, 255))
    for i, panel in enumerate(panels):
        row.paste(panel.resize((PANEL, PANEL), Image.NEAREST if i else Image.BILINEAR), (i * PANEL, 0))
    return row


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m scenewright.evaluation.figure", description=__doc__.splitlines()[0])
    parser.add_argument("--cases", required=True, type=Path)
    parser.add_argument("--pred", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path, help="PNG to write")
    parser.add_argument("--case", action="append", default=None, help="case name (repeat); default: the first four")
    args = parser.parse_args(argv)
    cases = [args.cases / name for name in args.case] if args.case else list_cases(args.cases)[:4]
    rows = [case_row(c, args.pred) for c in cases]
    figure = Image.new("RGB", (3 * PANEL, PANEL * len(rows)), (255, 255, 255))
    for i, row in enumerate(rows):
        figure.paste(row, (0, i * PANEL))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure.save(args.out)
    print(f"wrote {args.out} ({len(rows)} cases: input, masks, prediction through its reported camera)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
