"""The pipeline against the MIDI-3D reference (denoise loop, end-to-end case) and its own contract."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from scenewright.guidance import ClassifierFreeGuidance
from scenewright.masks import MaskError, instances_from_seg
from scenewright.meshing import box_smooth, dense_grid_points, progressive_bbox
from scenewright.models.dit import AttentionLayout
from scenewright.pipeline import (GenerationCancelled, ScenePipeline, _consensus_index,
                                  _normalised_boxes, _placed_boxes, make_tiny_random_pipeline)
from scenewright.placement import PlacedInstance, Placement
from scenewright.protocol import GenerationSettings


def _golden(golden_dir: Path, name: str) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in load_file(golden_dir / name).items()}


@pytest.fixture(scope="module")
def midi_tiny(golden_dir: Path) -> ScenePipeline:
    return ScenePipeline.from_pretrained(golden_dir / "tiny-midi-3d", device="cpu", dtype="fp32")


GOLDEN_LAYOUT = AttentionLayout((1, 2, 3))  # the reference goldens' multi-instance blocks


@pytest.fixture(scope="module")
def tiny_random(tmp_path_factory: pytest.TempPathFactory) -> ScenePipeline:
    folder = make_tiny_random_pipeline(tmp_path_factory.mktemp("models") / "tiny")
    return ScenePipeline.from_pretrained(folder, device="cpu")


def test_midi_checkpoint_defaults(midi_tiny: ScenePipeline) -> None:
    # A folder without our options is a MIDI-3D checkpoint: its frame, 50 steps, CFG 7, tokens = width.
    assert midi_tiny.options.frame == "midi"
    assert (midi_tiny.options.steps, midi_tiny.options.guidance_scale) == (50, 7.0)
    assert midi_tiny.prepare_latents(2, 0).shape == (2, 64, 8)


def test_denoise_loop_matches_reference(midi_tiny: ScenePipeline, golden_dir: Path) -> None:
    case = _golden(golden_dir, "denoise_loop_case.safetensors")
    latents = midi_tiny.prepare_latents(3, seed=42)
    assert torch.equal(latents, case["initial_latents"])
    seen_batches: list[int] = []
    hook = midi_tiny.transformer.register_forward_hook(lambda mod, args, out: seen_batches.append(out.shape[0]))
    try:
        final = midi_tiny.denoise(latents, case["image_embeds_1"], case["image_embeds_2"], steps=4,
                                  guiders=[ClassifierFreeGuidance(7.0)], layout=GOLDEN_LAYOUT)
    finally:
        hook.remove()
    torch.testing.assert_close(final, case["final_latents"], atol=1e-4, rtol=0)
    # One batched DiT call per step holding all instances and both CFG halves.
    assert seen_batches == [6, 6, 6, 6]


def test_end_to_end_case_matches_reference(midi_tiny: ScenePipeline, golden_dir: Path) -> None:
    case = _golden(golden_dir, "e2e_pipeline_case.safetensors")
    scene = Image.open(golden_dir / "e2e_scene_rgb.png")
    instances = instances_from_seg(Image.open(golden_dir / "e2e_scene_seg.png"))
    assert [i.id for i in instances] == [1, 2, 3]

    emb1, emb2 = midi_tiny.encode_conditions(scene, [i.mask for i in instances])
    torch.testing.assert_close(emb1, case["image_embeds_1"], atol=1e-4, rtol=0)
    torch.testing.assert_close(emb2, case["image_embeds_2"], atol=1e-4, rtol=0)

    latents = midi_tiny.denoise(midi_tiny.prepare_latents(3, seed=42), emb1, emb2, steps=4,
                                guiders=[ClassifierFreeGuidance(7.0)], layout=GOLDEN_LAYOUT)
    torch.testing.assert_close(latents, case["final_latents"], atol=1e-4, rtol=0)

    # The reference's progressive decoding at octree depth 4 and its box filter, on our VAE.
    box = ((-1.005,) * 3, (1.005,) * 3)
    first = torch.from_numpy(dense_grid_points(*box, 16)).expand(3, -1, -1)
    values = midi_tiny.decoder.decode(case["final_latents"], first)
    for row in range(3):
        low, high = progressive_bbox(first[row], values[row], *box)
        np.testing.assert_allclose(low, case["decoded_bbox_min"][row].numpy(), atol=1e-5)
        np.testing.assert_allclose(high, case["decoded_bbox_max"][row].numpy(), atol=1e-5)
        second = torch.from_numpy(dense_grid_points(low, high, 16))[None]
        logits = midi_tiny.decoder.decode(case["final_latents"][row : row + 1], second)
        torch.testing.assert_close(logits[0], case["decoded_logits_progressive_d4"][row, :, 0], atol=1e-4, rtol=0)
        smoothed = box_smooth(logits.reshape(17, 17, 17))
        torch.testing.assert_close(smoothed.reshape(17, 17, 17), case["decoded_smoothed_grid"][row], atol=1e-4, rtol=0)


def _scene() -> tuple[Image.Image, np.ndarray]:
    """A plain-background picture with three flat-coloured blocks and its label map."""
    image = np.full((96, 128, 3), 235, np.uint8)
    seg = np.zeros((96, 128), np.uint8)
    for label, (r0, r1, c0, c1), colour in [(1, (40, 80, 10, 40), (200, 60, 60)), (2, (30, 80, 50, 80), (60, 160, 60)),
                                            (3, (50, 85, 90, 120), (60, 60, 200))]:
        image[r0:r1, c0:c1] = colour
        seg[r0:r1, c0:c1] = label
    return Image.fromarray(image), seg


def test_generate_returns_placed_instances(tiny_random: ScenePipeline) -> None:
    image, seg = _scene()
    events: list[tuple[str, int, int]] = []
    result = tiny_random.generate(image, seg, GenerationSettings(mesh_resolution=32, seed=3, scene_size_m=5.0),
                                  progress=lambda *e: events.append(e))
    assert [i.id for i in result.instances] == [1, 2, 3]
    stages = [e[0] for e in events]
    assert stages.index("encode") < stages.index("denoise") < stages.index("decode") < stages.index("place")
    assert [e[1] for e in events if e[0] == "denoise"] == [1, 2, 3, 4]  # the model's default 4 steps
    placed = [i for i in result.instances if not i.empty]
    assert placed, "the tiny random model is calibrated to give surfaces"
    lowest = min(float(i.scene_vertices()[:, 2].min()) for i in placed)
    assert abs(lowest) < 1e-3  # the ground is z = 0
    for inst in placed:  # origin at the bottom centre of each object
        low, high = inst.vertices.min(0), inst.vertices.max(0)
        np.testing.assert_allclose([(low[0] + high[0]) / 2, (low[1] + high[1]) / 2, low[2]], 0.0, atol=1e-4)
    assert result.camera is not None and result.camera["resolution"] == [128, 96]
    assert set(result.timings) == {"preprocess", "encode", "denoise", "decode", "place"}


def test_generate_is_deterministic_per_seed(tiny_random: ScenePipeline) -> None:
    image, seg = _scene()
    settings = GenerationSettings(mesh_resolution=32, seed=7, steps=2)
    first = tiny_random.generate(image, seg, settings)
    second = tiny_random.generate(image, seg, settings)
    other = tiny_random.generate(image, seg, GenerationSettings(mesh_resolution=32, seed=8, steps=2))
    assert all(np.array_equal(a.vertices, b.vertices) for a, b in zip(first.instances, second.instances))
    assert not all(a.vertices.shape == b.vertices.shape and np.allclose(a.vertices, b.vertices)
                   for a, b in zip(first.instances, other.instances))


def _box_mesh(low: tuple[float, float, float], high: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    corners = np.array([[x, y, z] for x in (low[0], high[0]) for y in (low[1], high[1]) for z in (low[2], high[2])])
    return corners.astype(np.float32), np.array([[0, 1, 2], [5, 6, 7]], np.int32)


def test_candidates_keep_the_scene_the_others_agree_with() -> None:
    """Of three sampled scenes, two put the second object to the right of the first and one far behind it: a
    consensus keeps one of the two, whatever the scale and origin of each sample."""
    table = _box_mesh((0, 0, 0), (1, 1, 1))
    right = [table, _box_mesh((1.2, 0, 0), (1.7, 0.5, 0.5))]
    scaled = [(m[0] * 3.0 + 5.0, m[1]) for m in right]
    behind = [table, _box_mesh((0, 3, 0), (0.5, 3.5, 0.5))]

    def pick(*views):
        return views[_consensus_index([_normalised_boxes(v) for v in views])]

    assert pick(behind, right, scaled) is right
    assert pick(right, behind, scaled) is right
    assert any(pick(behind, scaled, right) is agreeing for agreeing in (scaled, right))
    # an instance without a surface agrees with nothing: the complete sample wins
    assert pick([table, None], right, scaled) is right


def test_placed_boxes_are_where_the_object_matrices_put_the_meshes() -> None:
    """Placed instances keep local vertices and a matrix: their boxes are compared where the matrix moves them."""
    local = _box_mesh((-0.5, -0.5, 0), (0.5, 0.5, 1))
    moved = np.eye(4)
    moved[:3, 3] = (3.0, 0.0, 0.0)
    placement = Placement([PlacedInstance(1, *local, np.eye(4), None), PlacedInstance(2, *local, moved, None), None],
                          camera={}, input_camera={}, scene_from_input=np.eye(4))
    world = [local, (local[0] + np.float32([3.0, 0.0, 0.0]), local[1]), None]
    boxes = _placed_boxes(placement)
    for got, want in zip(boxes, _normalised_boxes(world)):
        assert (got is None) == (want is None)
        if want is not None:
            np.testing.assert_allclose(got[0], want[0], atol=1e-6)
            np.testing.assert_allclose(got[1], want[1], atol=1e-6)
    assert boxes[0][1][0] < boxes[1][0][0]  # the moved one lies to the right


def test_generate_with_candidates_is_deterministic(tiny_random: ScenePipeline) -> None:
    image, seg = _scene()
    settings = GenerationSettings(mesh_resolution=32, seed=3, steps=2, candidates=3)
    first = tiny_random.generate(image, seg, settings)
    second = tiny_random.generate(image, seg, settings)
    assert [i.id for i in first.instances] == [1, 2, 3]
    assert all(np.array_equal(a.vertices, b.vertices) for a, b in zip(first.instances, second.instances))


def test_cancel_stops_between_steps(tiny_random: ScenePipeline) -> None:
    image, seg = _scene()
    steps_done: list[int] = []
    with pytest.raises(GenerationCancelled):
        tiny_random.generate(image, seg, GenerationSettings(steps=10, mesh_resolution=32),
                             progress=lambda stage, step, total: steps_done.append(step) if stage == "denoise" else None,
                             should_cancel=lambda: len(steps_done) >= 2)
    assert steps_done == [1, 2]


def test_cancel_during_decode_stops_before_placement(tiny_random: ScenePipeline) -> None:
    image, seg = _scene()
    stages: list[str] = []
    with pytest.raises(GenerationCancelled):
        tiny_random.generate(image, seg, GenerationSettings(steps=2, mesh_resolution=32),
                             progress=lambda stage, step, total: stages.append(stage),
                             should_cancel=lambda: "decode" in stages)
    assert stages[-1] == "decode" and "place" not in stages


def test_bad_inputs_are_clear_errors(tiny_random: ScenePipeline) -> None:
    image, seg = _scene()
    with pytest.raises(MaskError, match="no instances"):
        tiny_random.generate(image, np.zeros_like(seg))
    with pytest.raises(MaskError, match="128x96"):
        tiny_random.generate(image, seg[:50])
    with pytest.raises(ValueError, match="blocks 0..4"):
        tiny_random.generate(image, seg, GenerationSettings(mi_blocks=[7], mesh_resolution=32))


def test_generate_accepts_real_midi_inputs(tiny_random: ScenePipeline, shared_dir: Path) -> None:
    folder = shared_dir / "examples" / "midi-inputs"
    rgb = sorted(folder.glob("*_rgb.png"))[0]
    seg = Image.open(str(rgb).replace("_rgb.png", "_seg.png"))
    expected = len(instances_from_seg(seg))
    result = tiny_random.generate(Image.open(rgb), seg, GenerationSettings(steps=1, mesh_resolution=32))
    assert len(result.instances) == expected


def test_codec_model_generates_placed_instances(tiny_codec_model: Path, repo_root: Path) -> None:
    """The default model's kind end to end: condition encoder, DiT, shape codec meshes, camera, pose refinement."""
    pipe = ScenePipeline.from_pretrained(tiny_codec_model, device="cpu")
    assert type(pipe.decoder).__name__ == "ShapeCodec" and pipe.options.refine_poses
    example = repo_root / "backend" / "scenewright" / "assets" / "examples" / "desk"
    seg = Image.open(example / "seg.png")
    result = pipe.generate(Image.open(example / "image.png"), seg, GenerationSettings(seed=1))
    ids = [m.id for m in instances_from_seg(seg)]
    assert [i.id for i in result.instances] == ids
    assert all(not i.empty for i in result.instances)
    assert result.camera is not None and set(result.supports) == set(ids)
    for inst in result.instances:
        assert abs(float(inst.scene_vertices()[:, 2].min())) < 1e-3 or result.supports[inst.id] is not None
    same = pipe.generate(Image.open(example / "image.png"), seg, GenerationSettings(seed=1))
    assert all(np.array_equal(a.vertices, b.vertices) for a, b in zip(result.instances, same.instances))


@pytest.mark.parametrize("model", ["tiny_codec_model_with_extras", "tiny_codec_model_with_camera_estimator"])
def test_codec_model_camera_estimate_draws_the_camera_solve(model: str, request: pytest.FixtureRequest,
                                                            repo_root: Path) -> None:
    """With `camera_prior_weight`, the solve follows the model's camera estimate (the condition encoder's
    head, or a camera estimator component): an estimate made to say 40 degrees of pitch and 56 of field of
    view moves the solved camera there; without the weight the same model's solve lands elsewhere."""
    from scenewright.models.condition_encoder import camera_targets

    example = repo_root / "backend" / "scenewright" / "assets" / "examples" / "desk"
    image, seg = Image.open(example / "image.png"), Image.open(example / "seg.png")
    pipe = ScenePipeline.from_pretrained(request.getfixturevalue(model), device="cpu")
    estimator = pipe.camera_estimator
    assert (estimator is pipe.conditioner) == (model == "tiny_codec_model_with_extras")
    head = (estimator.camera_head if estimator is pipe.conditioner else estimator.head)[-1]
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(camera_targets(torch.tensor([40.0]), torch.tensor([56.0]))[0])
    assert estimator.estimate_camera(image, [m.mask for m in instances_from_seg(seg)]) == pytest.approx((40.0, 56.0))

    def solved(weight: float) -> tuple[float, float]:
        pipe.options.camera_prior_weight = weight
        camera = pipe.generate(image, seg, GenerationSettings(seed=1)).camera
        forward = -np.asarray(camera["matrix_world"])[:3, 2]
        return float(np.degrees(np.arcsin(-forward[2]))), float(camera["fov_deg"])

    free, drawn = solved(0.0), solved(100.0)
    assert drawn == pytest.approx((40.0, 56.0), abs=1.0)
    assert abs(free[0] - 40.0) + abs(free[1] - 56.0) > 3.0
    with pytest.raises(GenerationCancelled):
        pipe.generate(Image.open(example / "image.png"), seg, GenerationSettings(steps=2), should_cancel=lambda: True)
