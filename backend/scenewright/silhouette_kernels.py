"""Compiled (numba) inner loops of the silhouettes: `camera.silhouette_spans`' scanline fill, the pose fits'
silhouette/mask IoUs (`placement._SpanScorer`) and the vertex clustering that makes their meshes light. The pose
fits and camera solve call them thousands of times a request: compiled, the placement takes under half the time
it took in numpy (docs/performance.md), with the same results to the bit. They hold no GIL, so the candidates'
placement threads run side by side."""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def scanline_spans(pixels: np.ndarray, depth: np.ndarray, faces: np.ndarray, width: int, height: int,
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One mesh's projected vertices (V, 2) as (column, row), their depths (V,) and its faces (F, 3) -> (row,
    start, stop) of each non-empty span, face by face, rows in order; faces with a vertex at or behind the camera
    plane are skipped."""
    corners = np.empty((len(faces), 3, 2))
    count = 0
    for f in range(len(faces)):
        a, b, c = faces[f, 0], faces[f, 1], faces[f, 2]
        if depth[a] > 1e-9 and depth[b] > 1e-9 and depth[c] > 1e-9:
            for k in range(3):
                corners[count, k, 0], corners[count, k, 1] = pixels[faces[f, k], 0], pixels[faces[f, k], 1]
            count += 1
    first = np.empty(count, np.int64)
    last = np.empty(count, np.int64)
    total = 0
    for t in range(count):
        top = min(corners[t, 0, 1], corners[t, 1, 1], corners[t, 2, 1])
        bottom = max(corners[t, 0, 1], corners[t, 1, 1], corners[t, 2, 1])
        # rows r whose centre r + 0.5 lies within the triangle's vertical extent
        first[t] = int(min(max(np.ceil(top - 0.5), 0.0), float(height)))
        last[t] = int(min(max(np.floor(bottom - 0.5), -1.0), float(height - 1)))
        total += max(last[t] - first[t] + 1, 0)
    row = np.empty(total, np.int64)
    start = np.empty(total, np.int64)
    stop = np.empty(total, np.int64)
    kept = 0
    for t in range(count):
        for r in range(first[t], last[t] + 1):
            y = r + 0.5
            x_left, x_right = np.inf, -np.inf
            for e in range(3):  # edge a -> b; a horizontal one never crosses a row centre (its ends are on the others)
                xa, ya = corners[t, e, 0], corners[t, e, 1]
                xb, yb = corners[t, (e + 1) % 3, 0], corners[t, (e + 1) % 3, 1]
                lo, hi = min(ya, yb), max(ya, yb)
                if hi > lo and y >= lo and y <= hi:
                    slope = (xb - xa) / (yb - ya)
                    x = xa + (y - ya) * slope
                    x_left, x_right = min(x_left, x), max(x_right, x)
            # columns c whose centre c + 0.5 lies in [x_left, x_right]
            begin = min(max(np.ceil(x_left - 0.5), 0.0), float(width))
            end = min(max(np.floor(x_right - 0.5) + 1.0, 0.0), float(width))
            if end > begin:
                row[kept], start[kept], stop[kept] = r, int(begin), int(end)
                kept += 1
    return row[:kept], start[:kept], stop[:kept]


@numba.njit(cache=True, nogil=True)
def span_ious(owner: np.ndarray, row: np.ndarray, start: np.ndarray, stop: np.ndarray, in_mask: np.ndarray,
              in_other: np.ndarray, in_mask_only: np.ndarray, mask_area: np.ndarray, height: int, width: int,
              ) -> np.ndarray:
    """`_SpanScorer.ious`: each owner's spans are drawn into a coverage count over their own rows and
    columns (a difference array), whose covered runs are summed with the masks' prefix sums."""
    count = len(mask_area)
    row_lo = np.full(count, height, np.int64)
    row_hi = np.full(count, -1, np.int64)
    col_lo = np.full(count, width, np.int64)
    col_hi = np.zeros(count, np.int64)
    for k in range(len(owner)):
        o = owner[k]
        row_lo[o], row_hi[o] = min(row_lo[o], row[k]), max(row_hi[o], row[k])
        col_lo[o], col_hi[o] = min(col_lo[o], start[k]), max(col_hi[o], stop[k])
    rows = np.maximum(row_hi - row_lo + 1, 0)
    cols = np.maximum(col_hi - col_lo + 1, 0)  # one more than the columns: a span's end is marked past it
    offset = np.zeros(count + 1, np.int64)
    for o in range(count):
        offset[o + 1] = offset[o] + rows[o] * cols[o]
    diff = np.zeros(offset[count], np.int32)
    for k in range(len(owner)):
        o = owner[k]
        at = offset[o] + (row[k] - row_lo[o]) * cols[o] - col_lo[o]
        diff[at + start[k]] += 1
        diff[at + stop[k]] -= 1
    out = np.zeros(count)
    for o in range(count):
        inter = outside_others = mask_only = 0
        for r in range(rows[o]):
            base = (o * height + row_lo[o] + r) * (width + 1)
            at = offset[o] + r * cols[o]
            depth, run = 0, 0
            for c in range(cols[o]):
                before = depth
                depth += diff[at + c]
                if before == 0 and depth > 0:
                    run = col_lo[o] + c
                elif before > 0 and depth == 0:
                    end = col_lo[o] + c
                    inter += in_mask[base + end] - in_mask[base + run]
                    outside_others += (end - run) - (in_other[base + end] - in_other[base + run])
                    mask_only += in_mask_only[base + end] - in_mask_only[base + run]
        union = mask_area[o] + outside_others - mask_only
        out[o] = inter / max(union, 1.0)
    return out


@numba.njit(cache=True, nogil=True)
def cluster_vertices(vertices: np.ndarray, faces: np.ndarray, max_faces: int) -> tuple[np.ndarray, np.ndarray]:
    """Vertex-clustering decimation for fast silhouettes, (V, 3) float64 and (F, 3) int64: merge the vertices in
    each cell of a grid (128 cells along the longest side, then 3/4 as many at a time, down to 16) into their mean
    until at most `max_faces` faces remain; faces that collapse or repeat another are dropped, the rest ordered
    by their sorted vertex indices."""
    cells = 128
    while len(faces) > max_faces and cells >= 16:
        lo = np.empty(3)
        extent = 0.0
        for k in range(3):
            lo[k], hi = vertices[:, k].min(), vertices[:, k].max()
            extent = max(extent, hi - lo[k])
        size = extent / cells + 1e-12
        keys = np.empty(len(vertices), np.int64)
        for v in range(len(vertices)):
            x = np.int64(np.floor((vertices[v, 0] - lo[0]) / size))
            y = np.int64(np.floor((vertices[v, 1] - lo[1]) / size))
            z = np.int64(np.floor((vertices[v, 2] - lo[2]) / size))
            keys[v] = (x * (cells + 1) + y) * (cells + 1) + z
        order = np.argsort(keys)
        inverse = np.empty(len(vertices), np.int64)
        count = 0
        for j in range(len(order)):
            if j > 0 and keys[order[j]] != keys[order[j - 1]]:
                count += 1
            inverse[order[j]] = count
        count += 1
        sums = np.zeros((count, 3))
        members = np.zeros(count, np.int64)
        for v in range(len(vertices)):  # in vertex order, as np.bincount adds them
            for k in range(3):
                sums[inverse[v], k] += vertices[v, k]
            members[inverse[v]] += 1
        merged = np.empty((count, 3))
        for u in range(count):
            for k in range(3):
                merged[u, k] = sums[u, k] / members[u]
        remapped = np.empty_like(faces)
        face_keys = np.empty(len(faces), np.int64)
        kept = 0
        for f in range(len(faces)):
            a, b, c = inverse[faces[f, 0]], inverse[faces[f, 1]], inverse[faces[f, 2]]
            low, mid, high = min(a, b, c), a + b + c - min(a, b, c) - max(a, b, c), max(a, b, c)
            if low != mid and mid != high:
                remapped[kept, 0], remapped[kept, 1], remapped[kept, 2] = a, b, c
                face_keys[kept] = (low * count + mid) * count + high
                kept += 1
        face_order = np.argsort(face_keys[:kept])
        unique = np.empty(kept, np.int64)
        distinct = 0
        for j in range(kept):  # of equal faces, the first is kept
            if j == 0 or face_keys[face_order[j]] != face_keys[face_order[j - 1]]:
                unique[distinct] = face_order[j]
                distinct += 1
            else:
                unique[distinct - 1] = min(unique[distinct - 1], face_order[j])
        vertices, faces = merged, remapped[unique[:distinct]]
        cells = cells * 3 // 4
    return vertices, faces
