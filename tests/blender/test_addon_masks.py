"""Masks made in Blender: automatic masks on a plain background, blank masks, and the PNG bytes sent to the backend."""

from __future__ import annotations

import numpy as np
from PIL import Image


def _plain_background_scene() -> tuple[np.ndarray, list[np.ndarray]]:
    """A light, slightly noisy background with a box, a ring (its hole shows background) and a disc, plus a speck."""
    rng = np.random.default_rng(0)
    height, width = 100, 140
    rgb = (235 + rng.integers(-3, 4, (height, width, 3))).astype(np.uint8)
    yy, xx = np.mgrid[:height, :width]
    box = (yy >= 50) & (yy < 90) & (xx >= 10) & (xx < 40)
    radius = np.hypot(yy - 45, xx - 75)
    ring = (radius >= 8) & (radius < 18)
    disc = np.hypot(yy - 70, xx - 118) < 12
    for mask, colour in ((box, (190, 40, 30)), (ring, (30, 60, 200)), (disc, (40, 160, 60))):
        rgb[mask] = colour
    rgb[5:7, 5:7] = (0, 0, 0)  # 4 pixels of dirt: dropped as noise
    hole = radius < 8
    return rgb, [box, ring | hole, disc]  # the ring's hole is not connected to the border: part of the ring


MASKS_SCRIPT = '''
import numpy as np
from scipy import ndimage
masks = sys.modules[EXT.__name__ + ".masks"]
images = sys.modules[EXT.__name__ + ".images"]

# connected components agree with scipy's on random masks (4-connectivity)
rng = np.random.default_rng(1)
agree = []
for density in (0.3, 0.5, 0.7):
    mask = rng.random((60, 80)) < density
    ours, count = masks.label_components(mask)
    theirs, count_scipy = ndimage.label(mask)
    pairs = set(zip(ours[mask].tolist(), theirs[mask].tolist()))
    agree.append(count == count_scipy and len(pairs) == count and (ours > 0).tolist() == mask.tolist())

bpy.ops.wm.read_homefile(use_empty=True)
props = bpy.context.scene.scenewright
props.reference_image = images.load_image(PARAMS["image"])
auto = bpy.ops.scenewright.auto_masks()
seg = images.image_to_array(props.seg_image)
with open(PARAMS["seg_png"], "wb") as fh:
    fh.write(images.encode_png(seg[..., 0]))
blank = bpy.ops.scenewright.create_blank_mask()
blank_pixels = images.image_to_array(props.seg_image)
def generate_error():
    try:
        bpy.ops.scenewright.generate()
    except RuntimeError as exc:
        return str(exc)


empty_error = generate_error()
width, height = props.reference_image.size
many = np.repeat(np.arange(1, 21, dtype=np.uint8) * 12, width * height // 20 + 1)[: width * height].reshape(height, width)
props.seg_image = images.array_to_image("many", many)
many_error = generate_error()

rgba = (rng.random((7, 9, 4)) * 255).astype(np.uint8)
for name, array in (("gray", rgba[..., 0]), ("rgb", rgba[..., :3]), ("rgba", rgba)):
    with open(PARAMS["png_dir"] + "/" + name + ".png", "wb") as fh:
        fh.write(images.encode_png(array))
np.save(PARAMS["png_dir"] + "/source.npy", rgba)
sixteen_bit = images.image_to_array(images.load_image(PARAMS["png_dir"] + "/gray16.png"))
mid_gray_seg = masks.seg_image_to_array(images.load_image(PARAMS["png_dir"] + "/gray16.png"))
label_map = masks.seg_image_to_array(images.load_image(PARAMS["png_dir"] + "/labels16.png"))
np.save(PARAMS["png_dir"] + "/labels16_seen.npy", label_map)
done({"sixteen_bit": sorted(set(sixteen_bit[..., :3].ravel().tolist())),
      "mid_gray_seg": sorted(set(mid_gray_seg[..., :3].ravel().tolist())), "agree": agree, "auto": sorted(auto), "blank": sorted(blank), "blank_size": list(props.seg_image.size),
      "blank_max": int(blank_pixels[..., :3].max()), "empty_error": empty_error, "many_error": many_error})
'''


def test_auto_masks_blank_masks_and_png_encoding(blender, tmp_path):
    rgb, expected = _plain_background_scene()
    Image.fromarray(rgb).save(tmp_path / "scene.png")
    Image.fromarray(np.full((8, 8), 32768, np.uint16)).save(tmp_path / "gray16.png")  # loads as a linear float buffer
    labels = np.zeros((12, 10), np.uint16)
    labels[2:5, 1:4], labels[6:9, 2:8], labels[9:11, 7:9] = 1, 2, 3  # a 16-bit label map: values 1..3 on black
    Image.fromarray(labels).save(tmp_path / "labels16.png")
    run = blender.run(MASKS_SCRIPT, {"image": str(tmp_path / "scene.png"), "seg_png": str(tmp_path / "seg.png"),
                                     "png_dir": str(tmp_path)})
    out = run.result
    assert out["agree"] == [True, True, True]

    assert out["auto"] == ["FINISHED"]
    seg = np.asarray(Image.open(tmp_path / "seg.png"))
    values = [v for v in np.unique(seg) if v != 0]
    assert len(values) == 3  # one gray value per object, the speck dropped
    found = sorted((seg == v for v in values), key=lambda m: int(np.argmax(m.ravel())))
    for got, want in zip(found, sorted(expected, key=lambda m: int(np.argmax(m.ravel()))), strict=True):
        assert (got == want).all()

    assert out["blank"] == ["FINISHED"] and out["blank_size"] == [140, 100] and out["blank_max"] == 0
    assert "masks are empty" in out["empty_error"]
    assert "20 gray values, at most 16 objects" in out["many_error"]

    assert out["sixteen_bit"] == [128]  # mid-gray in the file is mid-gray on the wire
    assert out["mid_gray_seg"] == [128]  # an ordinary 16-bit gray seg image is not mistaken for a label map
    seen = np.load(tmp_path / "labels16_seen.npy")
    assert (seen[..., 0] == labels).all() and (seen[..., 1] == labels).all() and (seen[..., 3] == 255).all()

    source = np.load(tmp_path / "source.npy")
    assert (np.asarray(Image.open(tmp_path / "gray.png")) == source[..., 0]).all()
    assert (np.asarray(Image.open(tmp_path / "rgb.png")) == source[..., :3]).all()
    assert (np.asarray(Image.open(tmp_path / "rgba.png")) == source).all()
