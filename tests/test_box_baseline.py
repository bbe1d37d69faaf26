"""The box baseline reads a box back from its own silhouette through the camera it assumes."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from scenewright.camera import Camera, render_silhouettes
from scenewright.evaluation.box_baseline import BoxBaselineConfig, default_camera, predict_boxes
from scenewright.evaluation.metrics import bounds


@pytest.mark.parametrize("lo,hi", [((-0.5, 3.0, 0.0), (0.5, 4.0, 0.8)), ((-0.3, 5.0, 0.0), (0.3, 5.6, 1.5))])
def test_recovers_a_centred_box_on_the_ground(lo, hi):
    config = BoxBaselineConfig()
    camera = default_camera(512, 512, config)
    gt = trimesh.creation.box(bounds=[lo, hi])
    seg = render_silhouettes([(gt.vertices, gt.faces)], camera)[0].astype(np.uint8) * 3
    meshes, reported = predict_boxes(seg, config)
    assert list(meshes) == [3]
    got_lo, got_hi = bounds(meshes[3])
    extent = np.subtract(hi, lo)
    np.testing.assert_allclose(got_lo, lo, atol=0.03 * extent.max())
    np.testing.assert_allclose(got_hi, hi, atol=0.03 * extent.max())
    assert isinstance(reported, Camera) and np.allclose(reported.matrix_world, camera.matrix_world)


def test_boxes_reproject_onto_their_masks():
    """Its boxes seen through its reported camera cover their masks well (the Reproj-IoU it will score)."""
    seg = np.zeros((256, 256), np.uint8)
    seg[150:200, 40:90] = 1
    seg[120:140, 160:230] = 2
    meshes, camera = predict_boxes(seg)
    sils = render_silhouettes([meshes[1], meshes[2]], camera)
    for k, sil in zip((1, 2), sils):
        mask = seg == k
        assert (mask & sil).sum() / (mask | sil).sum() > 0.6
        assert meshes[k][0][:, 2].min() == pytest.approx(0.0)  # standing on the ground
