"""The SceneWright tab in the 3D viewport sidebar."""

from __future__ import annotations

import textwrap

import bpy

from .operators import is_watched, reference_image


def _wrapped(layout: bpy.types.UILayout, text: str, icon: str = "NONE", width: int = 48) -> None:
    for i, line in enumerate(textwrap.wrap(text, width) or [""]):
        layout.label(text=line, icon=icon if i == 0 else "BLANK1")


class SCENEWRIGHT_UL_jobs(bpy.types.UIList):
    def draw_item(self, context, layout, data, item, icon, active_data, active_propname, index=0):
        icons = {"succeeded": "CHECKMARK", "failed": "ERROR", "error": "ERROR", "cancelled": "X"}
        row = layout.row(align=True)
        row.label(text=f"{item.job_id[:8] or '...'}  {item.state}", icon=icons.get(item.state, "SORTTIME"))
        if item.state == "succeeded":
            row.operator("scenewright.import_job", text="", icon="IMPORT").job_id = item.job_id


class SceneWrightPanel:
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "SceneWright"


class SCENEWRIGHT_PT_main(SceneWrightPanel, bpy.types.Panel):
    bl_label = "SceneWright"

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        props = context.scene.scenewright
        layout.label(text="Reference Image")
        layout.template_ID(props, "reference_image", open="image.open")
        if props.reference_image is None:
            shown = reference_image(context)
            layout.label(text=f"Using {shown.name!r} from the Image Editor" if shown else "No image chosen", icon="INFO")
        layout.label(text="Instance Masks")
        layout.template_ID(props, "seg_image", open="image.open")
        row = layout.row(align=True)
        row.operator("scenewright.create_blank_mask", icon="BRUSH_DATA")
        row.operator("scenewright.auto_masks", icon="AUTO")
        layout.prop(props, "labels")

        running = next((job for job in props.jobs if job.active and is_watched(job.key)), None)
        if running is None:
            layout.operator("scenewright.generate", icon="PLAY")
        else:
            text = f"{running.stage} {running.step}/{running.total}" if running.total else running.stage or running.state
            layout.progress(factor=running.progress, type="BAR", text=text)
            layout.operator("scenewright.cancel", icon="CANCEL").job = running.key
        if props.error:
            _wrapped(layout.box(), props.error, icon="ERROR")


class SCENEWRIGHT_PT_settings(SceneWrightPanel, bpy.types.Panel):
    bl_label = "Settings"
    bl_parent_id = "SCENEWRIGHT_PT_main"

    def draw(self, context: bpy.types.Context) -> None:
        props = context.scene.scenewright
        col = self.layout.column()
        col.use_property_split = True
        col.prop(props, "model")
        col.prop(props, "steps")
        row = col.row(heading="Guidance")
        row.prop(props, "custom_guidance", text="")
        sub = row.row()
        sub.active = props.custom_guidance
        sub.prop(props, "guidance_scale", text="")
        col.prop(props, "guidance")
        sub = col.row()
        sub.active = props.guidance == "timi"
        sub.prop(props, "timi_alpha")
        col.prop(props, "seed")
        col.prop(props, "mi_blocks")
        col.prop(props, "mesh_resolution")
        col.prop(props, "max_faces")
        col.prop(props, "use_colors")
        col.prop(props, "add_ground")
        col.prop(props, "add_lighting")
        col.prop(props, "scene_size_m")


class SCENEWRIGHT_PT_jobs(SceneWrightPanel, bpy.types.Panel):
    bl_label = "Recent Jobs"
    bl_parent_id = "SCENEWRIGHT_PT_main"

    def draw(self, context: bpy.types.Context) -> None:
        props = context.scene.scenewright
        self.layout.template_list("SCENEWRIGHT_UL_jobs", "", props, "jobs", props, "jobs_index", rows=3)
        if 0 <= props.jobs_index < len(props.jobs):
            job = props.jobs[props.jobs_index]
            if job.message:
                _wrapped(self.layout, job.message, icon="INFO")


CLASSES = (SCENEWRIGHT_UL_jobs, SCENEWRIGHT_PT_main, SCENEWRIGHT_PT_settings, SCENEWRIGHT_PT_jobs)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)


def unregister() -> None:
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
