"""Per-scene inputs, settings and the list of recent jobs (saved with the .blend, so results can be re-imported)."""

from __future__ import annotations

import re

import bpy
from bpy.props import (
    BoolProperty,
    CollectionProperty,
    EnumProperty,
    FloatProperty,
    IntProperty,
    PointerProperty,
    StringProperty,
)

from . import protocol
from .images import InputError


class SCENEWRIGHT_PG_job(bpy.types.PropertyGroup):
    """One generation request as the panel lists it."""

    key: StringProperty()  # local id, known before the backend assigns job_id
    job_id: StringProperty(name="Job")
    state: StringProperty(name="State", default="submitting")
    stage: StringProperty(name="Stage")
    step: IntProperty()
    total: IntProperty()
    message: StringProperty(name="Message")
    result_dir: StringProperty(subtype="DIR_PATH")
    collection: StringProperty(name="Collection")

    @property
    def active(self) -> bool:
        return self.state not in protocol.FINISHED_STATES and self.state != "error"

    @property
    def progress(self) -> float:
        if self.state == "succeeded":
            return 1.0
        stages = protocol.STAGES
        index = stages.index(self.stage) if self.stage in stages else 0
        within = self.step / self.total if self.total else 0.0
        return min(1.0, (index + within) / (len(stages) - 1))


def model_candidates(self, context: bpy.types.Context, edit_text: str) -> list[tuple[str, str]]:
    """The Model field's drop-down: the shipped models containing what is typed (any folder or hub id may
    still be typed)."""
    text = edit_text.strip().lower()
    return [(name, what) for name, what in protocol.SHIPPED_MODELS.items() if text in name]


class SCENEWRIGHT_PG_scene(bpy.types.PropertyGroup):
    reference_image: PointerProperty(name="Reference", type=bpy.types.Image,
                                     description="The picture to rebuild (default: the image shown in an Image Editor)")
    seg_image: PointerProperty(name="Masks", type=bpy.types.Image,
                               description="Seg map: black background, one gray value or flat colour per object")
    model: StringProperty(name="Model", search=model_candidates,
                          description="Model to generate with: a shipped one by name (default, default-sca), a "
                                      "model folder or a hub repo id (empty: the backend's loaded model)")
    steps: IntProperty(name="Steps", default=0, min=0, max=int(protocol.SETTING_RANGES["steps"].high),
                       description="Denoising steps (0: the model's default)")
    custom_guidance: BoolProperty(name="Custom Guidance", default=False,
                                  description="Override the model's classifier-free guidance scale")
    guidance_scale: FloatProperty(name="Guidance", default=7.0, min=0.0,
                                  max=protocol.SETTING_RANGES["guidance_scale"].high)
    guidance: EnumProperty(
        name="Guidance Method",
        items=[("cfg", "Classifier-Free", "Classifier-free guidance at the scale above"),
               ("timi", "TIMI", "Classifier-free guidance plus TIMI's training-free instance guidance: early "
                                "cross-attention steered so that instances keep apart and follow the image's layout")],
        default="cfg")
    timi_alpha: FloatProperty(name="TIMI Strength", default=protocol.TimiSettings.alpha,
                              min=protocol.SETTING_RANGES["timi.alpha"].low, max=protocol.SETTING_RANGES["timi.alpha"].high,
                              description="TIMI's alpha: the largest latent update relative to the latents' spread")
    seed: IntProperty(name="Seed", default=0, min=0)
    mi_blocks: StringProperty(name="Multi-Instance Blocks",
                              description="Transformer blocks with multi-instance attention, e.g. 8-12 or 8,10,12 "
                                          "(empty: the model's default)")
    mesh_resolution: IntProperty(name="Mesh Detail", default=0, min=0,
                                 max=int(protocol.SETTING_RANGES["mesh_resolution"].high),
                                 description="Samples per axis of the grid the surfaces are extracted on (higher: finer, "
                                             f"slower; at least {int(protocol.SETTING_RANGES['mesh_resolution'].low)}; "
                                             "0: the model's default)")
    max_faces: IntProperty(name="Max Faces", default=0, min=0, max=int(protocol.SETTING_RANGES["max_faces"].high),
                           description="Decimate each object to at most this many faces, for light blockout meshes "
                                       f"(at least {int(protocol.SETTING_RANGES['max_faces'].low)}; 0: the model's "
                                       "default, 3000 for the default model)")
    labels: StringProperty(name="Labels", description="A name per object, in the order of the masks' gray values, "
                                                      "separated by commas (e.g. chair, table, lamp); empty: none")
    use_colors: BoolProperty(name="Colours from Picture", default=True,
                             description="Give each object a material in the colour of its pixels in the reference")
    add_ground: BoolProperty(name="Ground Plane", default=False,
                             description="Add a plane at z = 0 under the result (floor and contact shadows in renders)")
    add_lighting: BoolProperty(name="Add Lighting", default=False,
                               description="Add a sun (and a sky when the scene has no world) to the result's "
                                           "collection, unless the scene has its own light")
    scene_size_m: FloatProperty(name="Scene Size", default=0.0, min=0.0, max=protocol.SETTING_RANGES["scene_size_m"].high,
                                unit="LENGTH", description="Width of the generated scene in metres (0: automatic)")
    error: StringProperty(name="Error")
    jobs: CollectionProperty(type=SCENEWRIGHT_PG_job)
    jobs_index: IntProperty()

    def generation_settings(self) -> dict:
        """The settings as the backend expects them (protocol.GenerationSettings), validated here first."""
        settings = {
            "steps": self.steps or None,
            "guidance_scale": self.guidance_scale if self.custom_guidance else None,
            "seed": self.seed,
            "mi_blocks": parse_blocks(self.mi_blocks),
            "mesh_resolution": self.mesh_resolution or None,
            "max_faces": self.max_faces or None,
            "labels": [part.strip() for part in self.labels.split(",")] if self.labels.strip() else None,
            "scene_size_m": self.scene_size_m or None,
            "model": self.model.strip() or None,
            "guidance": self.guidance,
            "timi": {"alpha": self.timi_alpha},
        }
        try:
            return protocol.GenerationSettings.from_dict(settings).to_dict()
        except protocol.SettingsError as exc:
            raise InputError(str(exc)) from None

    def job(self, key: str) -> SCENEWRIGHT_PG_job | None:
        """The list entry with this local key or backend job id."""
        for item in self.jobs:
            if key and key in (item.key, item.job_id):
                return item
        return None


def parse_blocks(text: str) -> list[int] | None:
    """'8-12' / '8, 9, 12' -> [8, 9, 10, 11, 12] / [8, 9, 12]; empty -> None (the model's default)."""
    text = text.strip()
    if not text:
        return None
    blocks: list[int] = []
    for part in re.split(r"[,\s]+", text):
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if match is None:
            raise InputError(f"multi-instance blocks: cannot read {part!r}; write block indices like 8-12 or 8,10,12")
        low, high = int(match.group(1)), int(match.group(2) or match.group(1))
        blocks += range(low, high + 1)
    return sorted(set(blocks))


CLASSES = (SCENEWRIGHT_PG_job, SCENEWRIGHT_PG_scene)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    bpy.types.Scene.scenewright = PointerProperty(type=SCENEWRIGHT_PG_scene)
    bpy.types.WindowManager.scenewright_backend_status = StringProperty(name="Backend Status")


def unregister() -> None:
    del bpy.types.WindowManager.scenewright_backend_status
    del bpy.types.Scene.scenewright
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
