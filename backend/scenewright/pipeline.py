"""The multi-instance scene pipeline: image + instance masks -> placed meshes.

Stages: preprocess -> encode (the model's conditions: MIDI-3D's CLIP + 7-channel DINOv2,
or the default model's condition encoder) -> denoise (all instances and both CFG halves
in one batched DiT call per step, multi-instance attention in the chosen blocks) ->
decode (the model's decoder: MIDI-3D's VAE field with coarse-to-fine marching cubes, or
the default model's shape codec) -> place (camera solve, ground, scale, and for models
that generate poses a per-instance pose refinement against the masks).

Two interfaces make the model kinds interchangeable here: a conditioner
`encode(image, masks) -> (emb1, emb2)` and a decoder `meshes(latents, resolution,
check_cancel) -> [mesh | None]`; model_index.json's components say which a model has. A decoder
with a library of shapes also offers `alternatives(latents, count, resolution)`, which the pose
refinement of the kept candidate scene chooses among (PipelineOptions.shape_alternatives).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps

from .config import ConfigMixin
from .evaluation.metrics import box_iou, normalised_boxes
from .guidance import ClassifierFreeGuidance, StepContext, TimiGuidance
from .image_processing import build_conditions, mask_colours, resize_target, to_rgb_image
from .models.dit import PLAIN, AttentionLayout
from .masks import InstanceMask, MaskError, instances_from_seg
from .meshing import decimate
from .protocol import MAX_INSTANCES, SHIPPED_MODELS, GenerationSettings

if TYPE_CHECKING:
    from .placement import Placement

ProgressFn = Callable[[str, int, int], None]
CancelFn = Callable[[], bool]
StepCallback = Callable[[int, torch.Tensor, torch.Tensor], "torch.Tensor | None"]

# model_index.json key with our pipeline options; a folder without it is a MIDI-3D checkpoint.
OPTIONS_KEY = "_scenewright"


class GenerationCancelled(Exception):
    """should_cancel() turned true; raised between sampler steps and between chunks of mesh queries."""


@dataclass
class CandidateScene:
    """One sampled scene before placement, in the view frame and decimated to the request's face limit."""

    meshes: list[tuple[np.ndarray, np.ndarray] | None]  # per instance; None where it has no surface
    latents: torch.Tensor  # (instances, tokens, channels): what the meshes were decoded from
    mirrored: bool = False  # sampled from the mirrored picture; the meshes are reflected back


class EmptyResult(ValueError):
    """No instance came out with a surface: there is nothing to place or export; the message says what to try."""


@dataclass
class PipelineOptions(ConfigMixin):
    """Per-model sampling defaults and conventions, stored in model_index.json under OPTIONS_KEY."""

    frame: str = "midi"  # native output frame of the model: "view" (PROTOCOL.md section 3) or "midi"
    num_tokens: int | None = None  # latent tokens per instance; None = transformer width (MIDI's quirk)
    steps: int = 50
    guidance_scale: float = 7.0
    mi_blocks: list[int] | None = None  # None = the transformer's default_mi_blocks()
    mesh_resolution: int = 256  # marching-cubes cells per axis when the request gives none (MIDI-3D's octree depth 8)
    refine_poses: bool = False  # fit each instance's pose to its mask after the camera solve
    max_faces: int | None = None  # faces per object when the request gives no max_faces (None: as decoded)
    candidates: int = 1  # scenes sampled per request; the one agreeing most with the others is kept
    attention: str = "multi_instance"  # the layout of the chosen blocks: "multi_instance" or "scene_context"
    # weight of the conditioner's camera estimate (pitch, fov) as the camera solve's prior; 0: the solve's own
    # weak prior (CameraSolveConfig), for conditioners without an estimate too
    camera_prior_weight: float = 0.0
    # with a pose head (models/pose_head.py): its share of each instance's pose token, the sampler's the rest
    pose_head_blend: float = 0.5
    # with a shape codec that has a library: this many library shapes nearest each sampled one of the kept
    # candidate scene are tried against its mask after the pose fit, and one whose silhouette fits better replaces
    # it (placement.refine_poses; needs refine_poses); 0: shapes as sampled
    shape_alternatives: int = 0
    # the share of the candidate scenes (rounded down; the last ones) sampled from the mirrored picture, image
    # and masks flipped left to right, their meshes reflected back: the picture and its mirror err differently,
    # so the consensus has more to choose from (docs/results.md). View-frame models, classifier-free guidance.
    mirrored_share: float = 0.0
    # the choice among the placed candidate scenes: the one agreeing most with the others plus this times its
    # mean silhouette fit to the masks (placement.silhouette_fits); 0: agreement alone
    consensus_fit_weight: float = 0.0
    # the kept scene's instances resting on another moved back along their camera rays by this share of their
    # distance, their pictures kept (placement.recede_supported; needs refine_poses); 0: as fitted
    prop_recession: float = 0.0


class MidiConditions:
    """MIDI-3D's conditions: CLIP embedding of each instance image, DINOv2 tokens of [instance, scene, mask]."""

    def __init__(self, components: dict[str, Any]) -> None:
        self.image_encoder_1 = components["image_encoder_1"]
        self.image_encoder_2 = components["image_encoder_2"]
        self.feature_extractor_1 = components["feature_extractor_1"]
        self.feature_extractor_2 = components["feature_extractor_2"]
        self.modules = [self.image_encoder_1, self.image_encoder_2]

    @torch.no_grad()
    def encode(self, image: Image.Image, masks: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """Instance RGB -> CLIP embedding (N, 1, D1); [instance RGB, scene RGB, mask] -> DINOv2 tokens (N, L, D2)."""
        clip_pixels, dino_pixels = build_conditions(image, list(masks), self.feature_extractor_1, self.feature_extractor_2)
        weight = next(self.image_encoder_1.parameters())
        emb1 = self.image_encoder_1(clip_pixels.to(weight.device, weight.dtype)).unsqueeze(1)
        emb2 = self.image_encoder_2(dino_pixels.to(weight.device, weight.dtype))
        return emb1, emb2

    def patch_masks(self, masks: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """Which DINOv2 tokens are image patches (all but the CLS token) and the share of each patch that
        each mask covers, with the geometry of the RGB crop (shortest-edge resize, centre crop)."""
        config = self.feature_extractor_2
        patch = self.image_encoder_2.config.patch_size
        crop_w, crop_h = config.crop_size["width"], config.crop_size["height"]
        coverage = []
        for mask in masks:
            image = Image.fromarray(np.asarray(mask, np.uint8) * 255)
            image = image.resize(resize_target(*image.size, config.size), Image.Resampling.BOX)
            left, top = (image.width - crop_w) // 2, (image.height - crop_h) // 2
            crop = np.asarray(image.crop((left, top, left + crop_w, top + crop_h)), np.float32) / 255.0
            rows, cols = crop_h // patch, crop_w // patch
            cells = crop[: rows * patch, : cols * patch].reshape(rows, patch, cols, patch).mean(axis=(1, 3))
            coverage.append(cells.reshape(-1))
        weights = torch.from_numpy(np.stack(coverage))
        return torch.arange(1, 1 + weights.shape[1]), weights

    def estimate_camera(self, image: Image.Image, masks: Sequence[np.ndarray]) -> None:
        """MIDI-3D's encoders estimate no camera."""
        return None



@dataclass
class GeneratedInstance:
    """One object: a mesh in its own local frame and the matrix that places it in the scene."""

    id: int
    label: str | None
    vertices: np.ndarray  # (V, 3) float32, local frame (origin at the bottom centre once placed)
    faces: np.ndarray  # (F, 3) int32
    transform: np.ndarray = field(default_factory=lambda: np.eye(4))  # local -> scene (Blender matrix_world)
    color: tuple[float, float, float] | None = None  # sRGB 0..1, from the reference pixels under the mask

    @property
    def empty(self) -> bool:
        return len(self.faces) == 0

    def scene_vertices(self) -> np.ndarray:
        """Vertices in the scene frame (+Z up, +Y away from the camera: the view frame up to scale and origin)."""
        return (self.vertices @ self.transform[:3, :3].T + self.transform[:3, 3]).astype(np.float32)


@dataclass
class GenerationResult:
    instances: list[GeneratedInstance]
    settings: GenerationSettings
    frame: dict[str, Any]
    camera: dict[str, Any] | None = None  # protocol.CameraSpec dict in the scene frame, when solved
    supports: dict[int, int | None] = field(default_factory=dict)  # instance id -> id it rests on (None: ground)
    timings: dict[str, float] = field(default_factory=dict)


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 on CUDA (half the memory, tensor cores), float32 elsewhere."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so stage timings measure the stage and not the launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class ScenePipeline:
    """Holds the components of one model and runs generation; see the module docstring."""

    def __init__(self, components: dict[str, Any], options: PipelineOptions, source: str = "") -> None:
        self.transformer = components["transformer"]
        self.scheduler = components["scheduler"]
        if "condition_encoder" in components:
            self.conditioner = components["condition_encoder"]
            modules = [self.conditioner]
        else:
            self.conditioner = MidiConditions(components)
            modules = list(self.conditioner.modules)
        self.decoder = components["shape_codec"] if "shape_codec" in components else components["vae"]
        # what estimates the camera for the solve's prior: a camera estimator of its own, else the conditioner
        # (the condition encoder's camera head; None from encoders without one)
        if "camera_estimator" in components:
            self.camera_estimator = components["camera_estimator"]
            modules.append(self.camera_estimator)
        else:
            self.camera_estimator = self.conditioner
        self.pose_head = components.get("pose_head")
        if self.pose_head is not None:
            modules.append(self.pose_head)
        self.options = options
        self.source = source
        if options.shape_alternatives > 0 and not hasattr(self.decoder, "alternatives"):
            raise ValueError(f"shape_alternatives is {options.shape_alternatives}, but this model's decoder "
                             f"({type(self.decoder).__name__}) has no library of shapes to offer")
        if not 0.0 <= options.mirrored_share <= 1.0:
            raise ValueError(f"mirrored_share is {options.mirrored_share}: a share of the candidates, 0 to 1")
        if options.mirrored_share > 0 and options.frame != "view":
            raise ValueError(f"mirrored_share is {options.mirrored_share}, but a mirror image is reflected back in "
                             f"the view frame, and this model's frame is {options.frame!r}")
        for module in (self.transformer, self.decoder, *modules):
            module.eval().requires_grad_(False)

    @classmethod
    def from_pretrained(cls, source: str | Path, device: str = "auto", dtype: str | torch.dtype | None = None) -> "ScenePipeline":
        """Load a model folder or hub repo id (see loading.resolve_source), or a shipped model by name
        ("default", "default-sca": SHIPPED_MODELS)."""
        from .loading import ModelLoadError, load_components, read_model_index, resolve_device, resolve_dtype, resolve_source

        dev = resolve_device(device)
        if str(source) in SHIPPED_MODELS:
            name, source = str(source), shipped_model_path(str(source))
            if not (source / "model_index.json").is_file():
                raise ModelLoadError(f"the {name} model is not in this installation ({source}); train and export it "
                                     "(docs/training.md) or choose another model, e.g. a folder or VAST-AI/MIDI-3D")
        folder = resolve_source(source)
        torch_dtype = default_dtype(dev) if dtype is None else resolve_dtype(dtype)
        components = load_components(folder, dtype=torch_dtype, device=dev)
        options = PipelineOptions.from_dict(read_model_index(folder).get(OPTIONS_KEY))
        return cls(components, options, source=str(source))

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.transformer.parameters()).dtype

    # ---- stages -------------------------------------------------------------------------

    def encode_conditions(self, image: Image.Image, masks: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's image conditions of every instance, in the DiT's dtype."""
        emb1, emb2 = self.conditioner.encode(image, list(masks))
        return emb1.to(self.device, self.dtype), emb2.to(self.device, self.dtype)

    def prepare_latents(self, num_instances: int, seed: int) -> torch.Tensor:
        """Independent noise per instance, drawn on the CPU in float32 so results match across devices."""
        config = self.transformer.config
        tokens = self.options.num_tokens or config.width
        generator = torch.Generator("cpu").manual_seed(seed)
        latents = torch.randn((num_instances, tokens, config.in_channels), generator=generator, dtype=torch.float32)
        return latents.to(self.device)

    def denoise(
        self,
        latents: torch.Tensor,
        emb1: torch.Tensor,
        emb2: torch.Tensor | None,
        steps: int,
        guiders: Sequence[Any] = (),
        layout: AttentionLayout = PLAIN,
        progress: ProgressFn | None = None,
        should_cancel: CancelFn | None = None,
        callback_on_step_end: StepCallback | None = None,
        num_instances: int | None = None,
    ) -> torch.Tensor:
        """Rectified-flow sampling of one or more scenes: shared timestep, one batched DiT call per step.

        The rows are scenes of `num_instances` instances each (default: all rows, one scene),
        each followed by its scene row for scene-context models.

        Each step: every guider may move the latents (TIMI), then the velocity comes from the
        ClassifierFreeGuidance guider (the conditional prediction when there is none), the
        scheduler steps, and `callback_on_step_end(step, timestep, latents)` may return new
        latents. Gradients are only enabled inside a guider that needs them. Latents stay
        float32 between steps (the DiT may run in bf16/fp16).
        """
        cfg = next((g for g in guiders if isinstance(g, ClassifierFreeGuidance)), ClassifierFreeGuidance(1.0))
        num_instances = num_instances or latents.shape[0] - int(has_scene_row(layout))
        self.scheduler.set_timesteps(steps)
        with torch.no_grad():
            for i, t in enumerate(self.scheduler.timesteps):
                if should_cancel is not None and should_cancel():
                    raise GenerationCancelled()
                ctx = StepContext(self.transformer, t, i, emb1, emb2, layout, self.dtype, num_instances)
                for guider in guiders:
                    latents = guider.update_latents(ctx, latents)
                latents = self.scheduler.step(cfg.velocity(ctx, latents), t, latents)
                if callback_on_step_end is not None:
                    changed = callback_on_step_end(i, t, latents)
                    latents = latents if changed is None else changed
                if progress is not None:
                    progress("denoise", i + 1, steps)
        return latents

    @torch.no_grad()
    def blend_poses(self, latents: torch.Tensor, conditions: Sequence[tuple[torch.Tensor, torch.Tensor, int]],
                    rows: int) -> torch.Tensor:
        """Each sampled pose token moved `pose_head_blend` of the way to the pose head's read of the same picture:
        the two err differently, and their mean makes better boxes than either (docs/results.md).
        latents (K * rows, T, C): K candidate scenes of `rows` rows; conditions: (emb1, emb2, scenes) of each
        picture in turn (the picture, its mirror), whose next `scenes` candidates it conditions."""
        pose = torch.cat([self.pose_head(emb1.float(), emb2.float(), rows).float().repeat(scenes, 1)
                          for emb1, emb2, scenes in conditions])
        blend = self.options.pose_head_blend
        out = latents.clone()
        out[:, 0] = (1.0 - blend) * latents[:, 0] + blend * pose.to(latents.device)
        return out

    def guiders(self, settings: GenerationSettings, masks: Sequence[np.ndarray]) -> list[Any]:
        """The guiders a request asks for: CFG at the model's (or the request's) scale, and TIMI when chosen."""
        scale = self.options.guidance_scale if settings.guidance_scale is None else settings.guidance_scale
        guiders: list[Any] = [ClassifierFreeGuidance(scale)]
        if settings.guidance == "timi":
            patch_index, patch_masks = self.conditioner.patch_masks(list(masks))
            guiders.append(TimiGuidance(settings.timi, patch_index, patch_masks, self.decoder))
        return guiders

    def attention_layout(self, settings: GenerationSettings) -> AttentionLayout:
        """The one place the multi-instance blocks are chosen: the request's, else the model's, else the
        transformer's default (MIDI-3D's 5 middle blocks)."""
        blocks = settings.mi_blocks
        if blocks is None:
            blocks = self.options.mi_blocks if self.options.mi_blocks is not None else self.transformer.default_mi_blocks()
        num_layers = self.transformer.config.num_layers
        bad = [b for b in blocks if b >= num_layers]
        if bad:
            raise ValueError(f"mi_blocks {bad} do not exist: this model has blocks 0..{num_layers - 1}")
        return self.transformer.layout(blocks, self.options.attention)

    def refines_poses(self, settings: GenerationSettings) -> bool:
        """Whether the request's placement fits poses to the masks (the request's setting, else the model's)."""
        return self.options.refine_poses if settings.refine_poses is None else settings.refine_poses

    def decode(self, latents: torch.Tensor, resolution: int | None = None,
               should_cancel: CancelFn | None = None) -> list[tuple[np.ndarray, np.ndarray] | None]:
        """One mesh per instance in the model's native frame (None where it has no surface)."""

        def check_cancel() -> None:
            if should_cancel is not None and should_cancel():
                raise GenerationCancelled()

        return self.decoder.meshes(latents, resolution or self.options.mesh_resolution, check_cancel)

    def sample_candidates(
        self,
        scene: Image.Image,
        instances: Sequence[InstanceMask],
        settings: GenerationSettings,
        progress: ProgressFn | None = None,
        should_cancel: CancelFn | None = None,
        timings: dict[str, float] | None = None,
    ) -> tuple[list[CandidateScene], tuple[float, float] | None]:
        """Encode, denoise and decode the request's candidate scenes (candidate k from seed + k, all denoised
        together; the last `mirrored_share` of them from the mirrored picture), before any placement; and the
        model's camera estimate (pitch, fov), if it has one. `timings` receives the seconds of each stage."""
        report = progress or (lambda stage, step, total: None)
        timings = {} if timings is None else timings
        clock = time.perf_counter()
        report("encode", 0, 1)
        layout = self.attention_layout(settings)
        masks = [m.mask for m in instances]
        # I-Scene's scene branch: one more row, conditioned on the union of the masks, denoised with the instances
        rows = masks + [np.any(masks, axis=0)] if has_scene_row(layout) else masks
        candidates = settings.candidates or self.options.candidates
        mirrored = int(candidates * self.options.mirrored_share) if settings.guidance == "cfg" else 0
        conditions = [(*self.encode_conditions(scene, rows), candidates - mirrored)]
        if mirrored:
            flipped = [np.ascontiguousarray(np.asarray(r)[:, ::-1]) for r in rows]
            conditions.append((*self.encode_conditions(ImageOps.mirror(scene), flipped), mirrored))
        camera_estimate = self.camera_estimator.estimate_camera(scene, masks) if self.options.camera_prior_weight > 0 else None
        synchronize(self.device)
        timings["encode"] = time.perf_counter() - clock

        clock = time.perf_counter()
        guiders = self.guiders(settings, masks)
        latents = torch.cat([self.prepare_latents(len(rows), settings.seed + k) for k in range(candidates)])
        emb1 = torch.cat([e1.repeat(n, 1, 1) for e1, _, n in conditions if n])
        emb2 = None if conditions[0][1] is None else torch.cat([e2.repeat(n, 1, 1) for _, e2, n in conditions if n])
        steps = settings.steps or self.options.steps
        latents = self.denoise(latents, emb1, emb2, steps, guiders, layout, report, should_cancel,
                               num_instances=len(instances))
        if self.pose_head is not None and self.options.pose_head_blend > 0:
            latents = self.blend_poses(latents, conditions, len(rows))
        latents = latents.view(candidates, len(rows), *latents.shape[1:])[:, : len(instances)]
        synchronize(self.device)
        timings["denoise"] = time.perf_counter() - clock

        clock = time.perf_counter()
        report("decode", 0, 1)
        decoded = self.decode(latents.reshape(-1, *latents.shape[2:]), settings.mesh_resolution, should_cancel)
        views = []
        for k in range(candidates):
            flip = k >= candidates - mirrored
            meshes = [None if m is None else self.for_placement(m, settings, flip)
                      for m in decoded[k * len(instances) : (k + 1) * len(instances)]]
            views.append(CandidateScene(meshes, latents[k], flip))
        timings["decode"] = time.perf_counter() - clock
        return views, camera_estimate

    def for_placement(self, mesh: tuple[np.ndarray, np.ndarray], settings: GenerationSettings,
                      mirrored: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """A decoded mesh as placement takes it: decimated to the request's face limit, in the view frame, and
        reflected back (x -> -x, faces turned) when it was sampled from the mirrored picture."""
        max_faces = settings.max_faces or self.options.max_faces
        vertices, faces = _to_view_frame(decimate(*mesh, max_faces) if max_faces else mesh, self.options.frame)
        if mirrored:
            vertices, faces = vertices * np.array([-1.0, 1.0, 1.0], vertices.dtype), np.ascontiguousarray(faces[:, ::-1])
        return vertices, faces

    def library_alternatives(self, view: CandidateScene, settings: GenerationSettings) -> list[list[tuple[np.ndarray, np.ndarray]]]:
        """Per instance of a candidate scene, its sample's `shape_alternatives` nearest library shapes in its pose,
        prepared as its meshes are (so that their silhouettes compare like for like); empty lists when the model
        offers none or the request does not fit poses."""
        if self.options.shape_alternatives <= 0 or not self.refines_poses(settings):
            return [[] for _ in view.meshes]
        decoded = self.decoder.alternatives(view.latents, self.options.shape_alternatives,
                                            settings.mesh_resolution or self.options.mesh_resolution)
        return [[self.for_placement(m, settings, view.mirrored) for m in meshes] for meshes in decoded]

    # ---- the whole job ------------------------------------------------------------------

    def generate(
        self,
        image: Image.Image | np.ndarray,
        masks: Sequence[InstanceMask] | Image.Image | np.ndarray,
        settings: GenerationSettings | None = None,
        progress: ProgressFn | None = None,
        should_cancel: CancelFn | None = None,
    ) -> GenerationResult:
        from .placement import silhouette_fits

        settings = settings or GenerationSettings()
        report = progress or (lambda stage, step, total: None)
        timings: dict[str, float] = {}
        clock = time.perf_counter()

        report("preprocess", 0, 1)
        scene = to_rgb_image(image)
        instances = _as_instances(masks, scene.size)
        if settings.labels is not None and len(settings.labels) != len(instances):
            raise MaskError(f"{len(settings.labels)} labels for {len(instances)} instances: give one per instance")
        labels = dict(zip([i.id for i in instances], settings.labels or []))
        timings["preprocess"] = time.perf_counter() - clock

        views, camera_estimate = self.sample_candidates(scene, instances, settings, report, should_cancel, timings)
        views = [v for v in views if any(mesh is not None for mesh in v.meshes)]
        if not views:
            raise EmptyResult(f"none of the {len(instances)} instances came out with a surface; try another seed, more "
                              "steps or another guidance scale")

        clock = time.perf_counter()
        refine = self.refines_poses(settings)
        prior = None if camera_estimate is None else (*camera_estimate, self.options.camera_prior_weight)
        # every candidate is placed, side by side on the CPU's cores (the silhouette kernels and much of numpy and
        # scipy release the GIL, docs/performance.md); the placed scene that agrees most with the others is kept,
        # placed again choosing among its samples' library shapes (from its first placement's camera and poses),
        # and finished
        pixels = np.asarray(scene)
        place = functools.partial(_place, instances, image=pixels, scene_size_m=settings.scene_size_m,
                                  native_frame=self.options.frame, refine=refine, camera_prior=prior)
        with ThreadPoolExecutor(max_workers=min(len(views), os.cpu_count() or 1)) as pool:  # views: never empty here
            pending = [pool.submit(place, view.meshes) for view in views]
            placements = []
            for k, job in enumerate(pending):
                report("place", k, len(views) + 1)
                placements.append(job.result())
        weight, instance_masks = self.options.consensus_fit_weight, [i.mask for i in instances]
        kept = 0
        if len(placements) > 1:
            fits = [float(np.mean(f)) for f in silhouette_fits(placements, instance_masks)] if weight else None
            kept = _consensus_index([_placed_boxes(p) for p in placements], fits, weight)
        report("place", len(views), len(views) + 1)  # the kept scene: its library shapes, its supported instances
        alternatives = self.library_alternatives(views[kept], settings)
        placement = (place(views[kept].meshes, alternatives=alternatives, first=placements[kept]) if any(alternatives)
                     else placements[kept])
        generated, camera, supports = _finish_placement(placement, instances, labels, refine,
                                                        self.options.prop_recession)
        for inst, colour in zip(generated, mask_colours(scene, instance_masks)):
            inst.color = colour
        timings["place"] = time.perf_counter() - clock
        frame = {"name": "scene", "up": "+Z", "forward": "+Y", "right": "+X", "units": "m", "ground_z": 0.0,
                 "native": self.options.frame}
        return GenerationResult(generated, settings, frame, camera=camera, supports=supports, timings=timings)

def _consensus_index(boxes: list[list[tuple[np.ndarray, np.ndarray] | None]], fits: Sequence[float] | None = None,
                     fit_weight: float = 0.0) -> int:
    """Which sampled scene agrees most with the others (minimum-Bayes-risk selection): the highest mean IoU of its
    instances' boxes (`_normalised_boxes`, as the benchmark's IoU-B) with the same instances' boxes in every other
    sample. A sample far from what the model mostly draws is an outlier, not an option: on dev this kept scenes
    better than the best outline fit (docs/results.md). The boxes are compared after placement, which brings each
    sample's instances onto their masks: agreement there picks better scenes than agreement of the generated
    boxes on all three splits. With two samples agreement is symmetric and the first is kept: three is the least
    that can outvote an outlier. With `fits` (each sample's mean silhouette fit to the masks), `fit_weight` times
    its fit is added: how well a sample explains the picture, beside how typical it is."""

    def agreement(i: int) -> float:
        return float(np.mean([np.mean([_box_iou(a, b) for a, b in zip(boxes[i], boxes[j])])
                              for j in range(len(boxes)) if j != i]))

    return max(range(len(boxes)), key=lambda i: agreement(i) + (fit_weight * fits[i] if fits is not None else 0.0))


def _placed_boxes(placement: Placement) -> list[tuple[np.ndarray, np.ndarray] | None]:
    """`_normalised_boxes` of placed instances, where their object matrices put them."""
    return _normalised_boxes([None if p is None else (p.world_vertices(), p.faces) for p in placement.instances])


def _normalised_boxes(meshes: Sequence[tuple[np.ndarray, np.ndarray] | None]) -> list[tuple[np.ndarray, np.ndarray] | None]:
    """`normalised_boxes` (IoU-B's boxes) of a scene's meshes in order, None where a mesh is missing or empty."""
    boxes = normalised_boxes({k: m for k, m in enumerate(meshes) if m is not None})
    return [boxes.get(k) for k in range(len(meshes))]


def _box_iou(a: tuple[np.ndarray, np.ndarray] | None, b: tuple[np.ndarray, np.ndarray] | None) -> float:
    """`box_iou`, with an empty instance agreeing with nothing."""
    return 0.0 if a is None or b is None else box_iou(a, b)


def has_scene_row(layout: AttentionLayout) -> bool:
    """Scene-context attention in some block: each scene is its instances plus one scene row."""
    return layout.mode == "scene_context" and bool(layout.blocks)


def shipped_model_path(name: str) -> Path:
    """The folder of a shipped model (protocol.SHIPPED_MODELS; it may not be installed: check for its
    model_index.json)."""
    if name not in SHIPPED_MODELS:
        raise KeyError(f"{name!r} is not a shipped model; those are {', '.join(SHIPPED_MODELS)}")
    return Path(__file__).resolve().parent / "assets" / f"{name}-model"


def default_model_path() -> Path:
    """The model this project trains and ships, inside the package."""
    return shipped_model_path("default")


def _as_instances(masks: Sequence[InstanceMask] | Image.Image | np.ndarray, size: tuple[int, int]) -> list[InstanceMask]:
    instances = list(masks) if isinstance(masks, (list, tuple)) else instances_from_seg(masks)
    width, height = size
    for inst in instances:
        if inst.mask.shape != (height, width):
            raise MaskError(f"mask of instance {inst.id} is {inst.mask.shape[1]}x{inst.mask.shape[0]} but the image is {width}x{height}")
    instances = [inst for inst in instances if inst.mask.any()]
    if not instances:
        raise MaskError("no instances: the segmentation has no non-zero (non-background) pixels")
    if len(instances) > MAX_INSTANCES:
        raise MaskError(f"{len(instances)} instances found; at most {MAX_INSTANCES} are supported")
    return instances


def _to_view_frame(mesh: tuple[np.ndarray, np.ndarray] | None, native_frame: str) -> tuple[np.ndarray, np.ndarray] | None:
    if mesh is None:
        return None
    vertices, faces = mesh
    if native_frame == "midi":
        from .placement import MIDI_TO_VIEW

        vertices = vertices @ MIDI_TO_VIEW[:3, :3].T + MIDI_TO_VIEW[:3, 3]
    return vertices.astype(np.float32), faces.astype(np.int32)


def _place(
    instances: Sequence[InstanceMask],
    meshes: Sequence[tuple[np.ndarray, np.ndarray] | None],
    image: np.ndarray,
    scene_size_m: float | None,
    native_frame: str,
    refine: bool,
    camera_prior: tuple[float, float, float] | None = None,
    alternatives: Sequence[Sequence[tuple[np.ndarray, np.ndarray]]] | None = None,
    first: Placement | None = None,
) -> Placement:
    """Camera solve, [pose refinement, choosing among each instance's alternative shapes], ground and scale,
    [depths of round footprints and of flat tops (from the picture, image: (H, W, 3))]: a candidate scene's
    placement (meshes in the view frame); `_finish_placement` completes the one kept.

    `camera_prior` (pitch, fov in degrees, weight): the model's own estimate of the camera, which the solve is
    drawn towards instead of its generic prior.

    `first`: the placement of the same meshes without alternatives; its solved camera and fitted poses are
    taken as they are (the same answers) rather than found again.

    A view-frame model's scenes are upright and face the camera by construction (its training frame); MIDI-3D's
    are upright but not necessarily turned towards the camera: its yaw is solved, and a slightly tilted floor
    is levelled.
    """
    from .camera import Camera
    from .placement import CameraSolveConfig, fit_depths, place_scene, refine_poses, solve_camera

    masks = [i.mask for i in instances]
    image_size = (image.shape[1], image.shape[0])
    gravity_only = native_frame == "midi"
    config = CameraSolveConfig(solve_yaw=gravity_only)
    if camera_prior is not None:
        # The model's own estimate holds pitch and fov: the solve starts there only and skips its silhouette
        # refinement, which moved IoU-B by under 0.005 on three splits for about 1.1 s a placement, the time
        # that placing every candidate needs (docs/results.md, "The consensus taken after placement").
        config = dataclasses.replace(config, prior_pitch_deg=camera_prior[0], prior_fov_deg=camera_prior[1],
                                     prior_weight=camera_prior[2], pitch_grid_deg=(camera_prior[0],),
                                     fov_grid_deg=(camera_prior[1],), starts=1, refine_evals=0)
    if not refine:
        return place_scene(meshes, masks, image_size, scene_size_m, ids=[i.id for i in instances], config=config,
                           level_floor=gravity_only)
    if first is not None and first.pose_params is not None:
        camera, params = Camera.from_dict(first.input_camera), first.pose_params
    else:
        camera, params = solve_camera(meshes, masks, image_size, config)[0], None
    fitted = refine_poses(meshes, masks, camera, alternatives=alternatives, params=params)
    placement = place_scene(fitted.meshes, masks, image_size, scene_size_m, ids=[i.id for i in instances],
                            camera=camera, config=config, level_floor=gravity_only)
    return dataclasses.replace(fit_depths(placement, masks, image), pose_params=fitted.params)


def _finish_placement(placement: Placement, instances: Sequence[InstanceMask], labels: dict[int, str], refine: bool,
                      prop_recession: float = 0.0,
                      ) -> tuple[list[GeneratedInstance], dict[str, Any] | None, dict[int, int | None]]:
    """[Supported instances refitted, then moved back along their rays by `prop_recession`] (only for the kept
    candidate: choosing among them does not need it, and it costs about a quarter of a placement); instances
    without a surface stay empty and unplaced."""
    from .placement import recede_supported, refine_supported

    if refine:
        placement = recede_supported(refine_supported(placement, [i.mask for i in instances]), prop_recession)
    empty = (np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int32))
    generated = [
        GeneratedInstance(i.id, labels.get(i.id), *empty) if placed is None
        else GeneratedInstance(i.id, labels.get(i.id), placed.vertices, placed.faces, placed.transform)
        for i, placed in zip(instances, placement.instances)
    ]
    supports = {p.id: p.support for p in placement.instances if p is not None}
    return generated, placement.camera, supports


def make_tiny_random_pipeline(folder: str | Path, seed: int = 0, inside_fraction: float = 0.4) -> Path:
    """Write a tiny random-weight model folder (golden-replica sizes) for tests and demos of the plumbing.

    The VAE's output bias is shifted so that about `inside_fraction` of the box decodes as inside for
    unit-normal latents, so the pipeline produces (meaningless) non-empty meshes end to end; sampled
    latents leave far less inside, and the reference recipe's box filter removes what is left of small
    blobs, hence the large default. With 0 nothing is inside anywhere (every instance decodes empty).
    """
    from .loading import save_pipeline
    from .models.presets import build_components, give_random_field_a_surface

    components = build_components("tiny", seed=seed)
    vae = components["vae"]
    generator = torch.Generator("cpu").manual_seed(seed)
    if inside_fraction > 0:
        give_random_field_a_surface(vae, torch.randn((4, 64, vae.config.latent_channels), generator=generator),
                                    inside_fraction)
    else:
        with torch.no_grad():
            vae.decoder.proj_out.bias.fill_(-1e4)  # the field is minus the output: far outside everywhere
    options = PipelineOptions(frame="view", num_tokens=64, steps=4, guidance_scale=3.0,
                              mi_blocks=components["transformer"].default_mi_blocks(3), mesh_resolution=32)
    folder = Path(folder)
    save_pipeline(components, folder, extra_index={OPTIONS_KEY: options.to_dict()})
    return folder
