"""Add-on preferences: where the backend runs (a local process or a URL) and its status line."""

from __future__ import annotations

import bpy
from bpy.props import BoolProperty, EnumProperty, FloatProperty, StringProperty

from . import protocol
from .backend_process import BackendSettings

DEVICES = [
    ("auto", "Auto", "CUDA if available, else Apple MPS, else CPU"),
    ("cuda", "CUDA", "NVIDIA GPU"),
    ("mps", "MPS", "Apple GPU"),
    ("cpu", "CPU", "Slow; for trying things out"),
]


class SceneWrightPreferences(bpy.types.AddonPreferences):
    bl_idname = __package__

    backend_mode: EnumProperty(
        name="Backend",
        items=[
            ("LOCAL", "Local Process", "Start the backend on this computer from its Python environment"),
            ("REMOTE", "Running Service", "Connect to a backend that is already running, possibly on another machine"),
        ],
        default="LOCAL",
    )
    environment: StringProperty(
        name="Environment",
        description="Folder of the Python environment (venv or conda) scenewright is installed in, or its python executable",
        subtype="FILE_PATH",
    )
    data_dir: StringProperty(
        name="Data Folder",
        description="Where the local backend keeps jobs and its state file (empty: the backend's default folder)",
        subtype="DIR_PATH",
    )
    model: StringProperty(name="Model", description="Model the local backend loads: default, a hub id or a folder",
                          default="default")
    device: EnumProperty(name="Device", items=DEVICES, default="auto")
    auto_start: BoolProperty(name="Start on First Use", default=True,
                             description="Start the local backend when the first request needs it")
    url: StringProperty(name="URL", default="http://127.0.0.1:8765", description="Address of a running backend")
    token: StringProperty(name="Token", subtype="PASSWORD",
                          description="The backend's access token (its service.json, or SCENEWRIGHT_TOKEN)")
    timeout: FloatProperty(name="Timeout (s)", default=15.0, min=1.0, max=600.0,
                           description="How long one request may take before giving up")

    def backend_settings(self) -> BackendSettings:
        return BackendSettings(mode=self.backend_mode, url=self.url.strip(), token=self.token.strip(),
                               environment=bpy.path.abspath(self.environment), data_dir=data_dir(self),
                               model=self.model.strip() or "default", device=self.device, auto_start=self.auto_start,
                               timeout=self.timeout)

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        layout.prop(self, "backend_mode", expand=True)
        col = layout.column()
        if self.backend_mode == "LOCAL":
            col.prop(self, "environment")
            col.prop(self, "data_dir")
            col.prop(self, "model")
            col.prop(self, "device")
            col.prop(self, "auto_start")
            row = col.row()
            row.operator("scenewright.start_backend", icon="PLAY")
            row.operator("scenewright.stop_backend", icon="PAUSE")
        else:
            col.prop(self, "url")
            col.prop(self, "token")
        col.prop(self, "timeout")
        row = layout.row()
        row.operator("scenewright.check_backend", icon="FILE_REFRESH")
        row.operator("scenewright.unload_model", icon="TRASH")
        status = context.window_manager.scenewright_backend_status
        if status:
            box = layout.box()
            for line in status.splitlines():
                box.label(text=line)


def data_dir(prefs: SceneWrightPreferences) -> str:
    """The configured data folder, or the one `scenewright serve` uses by default."""
    if prefs.data_dir.strip():
        return bpy.path.abspath(prefs.data_dir)
    return str(protocol.default_data_dir())


def get_preferences(context: bpy.types.Context | None = None) -> SceneWrightPreferences:
    context = context or bpy.context
    return context.preferences.addons[__package__].preferences


def register() -> None:
    bpy.utils.register_class(SceneWrightPreferences)


def unregister() -> None:
    bpy.utils.unregister_class(SceneWrightPreferences)
