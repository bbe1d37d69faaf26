"""Operators: generate, cancel, re-import, masks, and backend start/stop/check.

Network and waiting run in worker threads; their results are applied on the
main thread by a short bpy.app.timers tick. In background mode (command line)
timers never fire, so the same work runs inline and blocks.
"""

from __future__ import annotations

import queue
import textwrap
import threading
import time
import traceback
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import bpy
import numpy as np

from . import importer, masks, protocol
from .backend_process import BackendSettings, stop_local_backend
from .client import BackendClient, BackendError
from .images import InputError, encode_png, image_to_array
from .preferences import get_preferences

Emit = Callable[[Any], None]
TICK_S = 0.1
TICK_BUDGET_S = 0.05
MAX_JOBS = 20  # entries kept in the panel's job list


class JobFailed(BackendError):
    """The backend finished the job without a result (failed or cancelled)."""


# ---- worker threads whose results are applied on the main thread ---------------------------------


class Task:
    """`work(emit, cancelled)` off the main thread; on_event / on_done / on_error on the main thread."""

    def __init__(self, work: Callable[[Emit, Callable[[], bool]], Any], on_event: Emit | None,
                 on_done: Callable[[Any], None] | None, on_error: Callable[[str], None], job_key: str = "") -> None:
        self.work, self.on_event, self.on_done, self.on_error = work, on_event, on_done, on_error
        self.job_key = job_key  # the job-list entry a generation task watches
        self.events: queue.Queue = queue.Queue()
        self.cancel_requested = threading.Event()

    def run_inline(self) -> None:
        try:
            result = self.work(self._apply_event, self.cancel_requested.is_set)
            if self.on_done is not None:
                self.on_done(result)
        except Exception as exc:  # every failure reaches the user as a message
            self.on_error(error_message(exc))

    def start(self) -> None:
        threading.Thread(target=self._thread, name="scenewright-task", daemon=True).start()
        _tasks.append(self)
        if not bpy.app.timers.is_registered(_pump):
            bpy.app.timers.register(_pump, first_interval=TICK_S)

    def _thread(self) -> None:
        try:
            result = self.work(lambda event: self.events.put(("event", event)), self.cancel_requested.is_set)
        except Exception as exc:
            self.events.put(("error", error_message(exc)))
        else:
            self.events.put(("done", result))

    def _apply_event(self, event: Any) -> None:
        if self.on_event is not None:
            self.on_event(event)


_tasks: list[Task] = []


def run_task(work: Callable[[Emit, Callable[[], bool]], Any], on_error: Callable[[str], None],
             on_done: Callable[[Any], None] | None = None, on_event: Emit | None = None,
             blocking: bool | None = None, job_key: str = "") -> Task:
    """Run `work` in a thread, or inline when blocking (default: only in background mode, where timers never fire)."""
    task = Task(work, on_event, on_done, on_error, job_key)
    if bpy.app.background if blocking is None else blocking:
        task.run_inline()
    else:
        task.start()
    return task


def _pump() -> float | None:
    """Timer tick: apply queued worker results for at most TICK_BUDGET_S, then yield to the UI."""
    deadline = time.perf_counter() + TICK_BUDGET_S
    for task in list(_tasks):
        while time.perf_counter() < deadline:
            try:
                kind, payload = task.events.get_nowait()
            except queue.Empty:
                break
            try:
                if kind == "event" and task.on_event is not None:
                    task.on_event(payload)
                elif kind == "done" and task.on_done is not None:
                    task.on_done(payload)
                elif kind == "error":
                    task.on_error(payload)
            except Exception as exc:
                task.on_error(error_message(exc))
            if kind in ("done", "error"):
                _tasks.remove(task)
                break
    _redraw()
    return TICK_S if _tasks else None


def error_message(exc: BaseException) -> str:
    """Known failures carry their own message; anything else is a bug: say so, keep the traceback in the console."""
    if isinstance(exc, (BackendError, InputError, importer.ResultError)):
        return str(exc)
    traceback.print_exception(exc)
    return f"unexpected error ({type(exc).__name__}: {exc}); details are in the system console"


def _redraw() -> None:
    for window in bpy.context.window_manager.windows:
        for area in window.screen.areas:
            if area.type in ("VIEW_3D", "PREFERENCES"):
                area.tag_redraw()


def notify(level: str, message: str) -> None:
    """A report in Blender's status bar from outside an operator (a timer tick); printed in background mode."""
    print(f"SceneWright {level.lower()}: {message}")
    if bpy.app.background:
        return
    windows = bpy.context.window_manager.windows
    if windows:
        with bpy.context.temp_override(window=windows[0]):
            bpy.ops.scenewright.report(level=level, message=message)


# ---- generation ----------------------------------------------------------------------------------


@dataclass
class GenerationRequest:
    """Everything a job needs, read from Blender on the main thread."""

    scene_name: str
    reference_name: str
    image: np.ndarray  # (H, W, 4) uint8
    seg: np.ndarray  # (H, W, 4) uint8
    settings: dict[str, Any]


def reference_image(context: bpy.types.Context) -> bpy.types.Image | None:
    """The panel's reference image, else the image shown in an Image Editor."""
    image = context.scene.scenewright.reference_image
    if image is not None:
        return image
    screen = context.screen
    for area in screen.areas if screen is not None else []:
        if area.type == "IMAGE_EDITOR" and area.spaces.active.image is not None:
            image = area.spaces.active.image
            if image != context.scene.scenewright.seg_image:
                return image
    return None


def collect_request(context: bpy.types.Context) -> GenerationRequest:
    """Read and check the panel's inputs, so that mistakes are reported before anything is sent."""
    props = context.scene.scenewright
    reference = reference_image(context)
    if reference is None:
        raise InputError("no reference image: pick or open one in the SceneWright panel (or show one in an Image Editor)")
    if props.seg_image is None:
        raise InputError("no masks: pick a seg image, or use Create Blank Mask / Auto Masks in the SceneWright panel")
    image, seg = image_to_array(reference), masks.seg_image_to_array(props.seg_image)
    if image.shape[:2] != seg.shape[:2]:
        raise InputError(f"the masks are {seg.shape[1]}x{seg.shape[0]} but the reference is {image.shape[1]}x{image.shape[0]}; "
                         "they must be the same size")
    if max(image.shape[:2]) > protocol.MAX_IMAGE_SIDE or min(image.shape[:2]) < protocol.MIN_IMAGE_SIDE:
        raise InputError(f"the reference must be {protocol.MIN_IMAGE_SIDE} to {protocol.MAX_IMAGE_SIDE} pixels per side")
    instances = np.unique(seg_gray(seg))
    instances = instances[instances > 0]
    if len(instances) == 0:
        raise InputError("the masks are empty (all black): paint one gray value or colour per object")
    if len(instances) > protocol.MAX_INSTANCES:
        raise InputError(f"the masks hold {len(instances)} gray values, at most {protocol.MAX_INSTANCES} objects are "
                         "supported; antialiased painting makes extra values: paint with a hard brush")
    return GenerationRequest(context.scene.name, reference.name, image, seg, props.generation_settings())


def seg_gray(seg: np.ndarray) -> np.ndarray:
    """(H, W, 3|4) uint8 -> (H, W) gray as the backend reads seg maps (PIL's fixed-point ITU-R 601-2 luma)."""
    rgb = seg[..., :3].astype(np.int64)
    return ((rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000) >> 16).astype(np.uint8)


def results_folder(backend: BackendSettings, job_id: str) -> Path:
    return Path(backend.data_dir) / "imports" / job_id


def start_generation(context: bpy.types.Context, backend: BackendSettings,
                     on_error: Callable[[str], None] | None = None, blocking: bool | None = None) -> Task:
    """Submit the scene's inputs; progress goes into the job list, the result is imported with an undo step.

    Raises InputError (before anything is sent) when the inputs are unusable.
    """
    request = collect_request(context)
    props = context.scene.scenewright
    props.error = ""
    key = uuid.uuid4().hex
    item = props.jobs.add()
    item.key, item.state, item.stage = key, "submitting", "queued"
    props.jobs.move(len(props.jobs) - 1, 0)  # newest first; `item` is stale after the move, use `key`
    props.jobs_index = 0
    for index in range(len(props.jobs) - 1, MAX_JOBS - 1, -1):  # keep the list to the recent ones
        if not is_watched(props.jobs[index].key):
            props.jobs.remove(index)

    def work(emit: Emit, cancelled: Callable[[], bool]) -> tuple[str, Path]:
        client = BackendClient(backend.connect())
        client.health()
        rgb = request.image[..., :3]
        status = client.submit(encode_png(rgb), request.settings, seg_png=encode_png(request.seg[..., :3]))
        emit(status)
        final = client.wait(status.job_id, on_status=emit, should_cancel=cancelled)
        if final.state != "succeeded":
            raise JobFailed(f"job {final.job_id} {final.state}" + (f": {final.message}" if final.message else ""))
        folder = results_folder(backend, final.job_id)
        client.download_result(final.job_id, folder)
        return final.job_id, folder

    last_line = [""]

    def on_event(status: protocol.JobStatus) -> None:
        job = _job_item(request.scene_name, key)
        if job is not None:
            job.job_id, job.state, job.stage = status.job_id, status.state, status.stage
            job.step, job.total, job.message = status.step, status.total, status.message
        if bpy.app.background:  # command line: progress on stdout, one line per change
            line = f"SceneWright: {status.state} {status.stage} {status.step}/{status.total}"
            if line != last_line[0]:
                print(line, flush=True)
                last_line[0] = line

    def on_done(result: tuple[str, Path]) -> None:
        job_id, folder = result
        job = _job_item(request.scene_name, key)
        if job is not None:
            job.state, job.stage, job.result_dir = "succeeded", "done", str(folder)
        apply_import(request.scene_name, job_id, folder, request.reference_name)

    def failed(message: str) -> None:
        job = _job_item(request.scene_name, key)
        scene = bpy.data.scenes.get(request.scene_name)
        if job is not None:
            job.message = message
            if job.active:  # failed before the backend reported a final state
                job.state = "error"
        if scene is not None:
            scene.scenewright.error = message
        (on_error or (lambda text: notify("ERROR", text)))(message)

    return run_task(work, failed, on_done, on_event, blocking, job_key=key)


def is_watched(job_key: str) -> bool:
    """Whether a worker of this session follows the job (entries of earlier sessions are not)."""
    return any(task.job_key == job_key for task in _tasks)


def _job_item(scene_name: str, key: str):
    scene = bpy.data.scenes.get(scene_name)
    return None if scene is None else scene.scenewright.job(key)


def apply_import(scene_name: str, job_id: str, folder: Path, reference_name: str = "") -> importer.ImportedResult:
    """Main thread: import a downloaded result (one undo step in the UI)."""
    scene = bpy.data.scenes[scene_name]
    reference = bpy.data.images.get(reference_name) if reference_name else None
    props = scene.scenewright
    options = importer.ImportOptions(colors=props.use_colors, ground=props.add_ground, lighting=props.add_lighting)
    imported = importer.import_result(folder, scene, reference, options)
    job = scene.scenewright.job(job_id)
    if job is not None:
        job.collection = imported.collection.name
    if not bpy.app.background:
        windows = bpy.context.window_manager.windows
        if windows:
            with bpy.context.temp_override(window=windows[0]):
                bpy.ops.ed.undo_push(message="SceneWright: import result")
    return imported


class SCENEWRIGHT_OT_generate(bpy.types.Operator):
    """Send the reference image and masks to the backend; the result is imported when it is done"""

    bl_idname = "scenewright.generate"
    bl_label = "Generate"

    def execute(self, context: bpy.types.Context) -> set[str]:
        errors: list[str] = []

        def on_error(message: str) -> None:
            errors.append(message)
            if not bpy.app.background:
                notify("ERROR", message)

        try:
            start_generation(context, get_preferences(context).backend_settings(), on_error)
        except InputError as exc:
            context.scene.scenewright.error = str(exc)
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        if errors:  # background mode: the job already ran and failed
            self.report({"ERROR"}, errors[0])
            return {"CANCELLED"}
        return {"FINISHED"}


class SCENEWRIGHT_OT_cancel(bpy.types.Operator):
    """Ask the backend to stop the running job"""

    bl_idname = "scenewright.cancel"
    bl_label = "Cancel"

    job: bpy.props.StringProperty(options={"SKIP_SAVE"}, description="Job list key or job id; empty: every running job")

    def execute(self, context: bpy.types.Context) -> set[str]:
        item = context.scene.scenewright.job(self.job) if self.job else None
        watched = [t for t in _tasks if t.job_key and (item is None or t.job_key == item.key)]
        for task in watched:
            task.cancel_requested.set()  # the worker's poll loop calls the cancel endpoint
        if not watched and item is not None and item.job_id:  # e.g. a job submitted before the file was reopened
            backend, job_id, scene_name = get_preferences(context).backend_settings(), item.job_id, context.scene.name

            def work(emit: Emit, cancelled: Callable[[], bool]) -> protocol.JobStatus:
                return BackendClient(backend.connect()).cancel(job_id)

            run_task(work, lambda message: notify("ERROR", message), lambda status: _set_state(scene_name, status))
        elif not watched:
            self.report({"WARNING"}, "no running job to cancel")
            return {"CANCELLED"}
        self.report({"INFO"}, "cancelling")
        return {"FINISHED"}


def _set_state(scene_name: str, status: protocol.JobStatus) -> None:
    job = _job_item(scene_name, status.job_id)
    if job is not None:
        job.state, job.message = status.state, status.message


class SCENEWRIGHT_OT_import_job(bpy.types.Operator):
    """Import a finished job's result again (downloaded from the backend if it is not on disk)"""

    bl_idname = "scenewright.import_job"
    bl_label = "Re-import"

    job_id: bpy.props.StringProperty()

    def execute(self, context: bpy.types.Context) -> set[str]:
        backend = get_preferences(context).backend_settings()
        job = context.scene.scenewright.job(self.job_id)
        folder = Path(job.result_dir) if job is not None and job.result_dir else results_folder(backend, self.job_id)
        scene_name, job_id, errors = context.scene.name, self.job_id, []
        reference = reference_image(context)

        def work(emit: Emit, cancelled: Callable[[], bool]) -> Path:
            if not (folder / "result.json").is_file() or not (folder / "result.glb").is_file():
                BackendClient(backend.connect()).download_result(job_id, folder)
            return folder

        def on_error(message: str) -> None:
            errors.append(message)
            if not bpy.app.background:
                notify("ERROR", message)

        run_task(work, on_error, lambda path: apply_import(scene_name, job_id, path, reference.name if reference else ""))
        if errors:
            self.report({"ERROR"}, errors[0])
            return {"CANCELLED"}
        return {"FINISHED"}


# ---- masks ---------------------------------------------------------------------------------------


def _show_in_image_editors(context: bpy.types.Context, image: bpy.types.Image, paint: bool) -> None:
    for area in context.screen.areas if context.screen is not None else []:
        if area.type == "IMAGE_EDITOR":
            area.spaces.active.image = image
            if paint:
                area.spaces.active.ui_mode = "PAINT"


class SCENEWRIGHT_OT_create_blank_mask(bpy.types.Operator):
    """Create a black mask image of the reference's size; paint one gray value or colour per object over it"""

    bl_idname = "scenewright.create_blank_mask"
    bl_label = "Create Blank Mask"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context: bpy.types.Context) -> set[str]:
        return _make_mask(self, context, masks.create_blank_mask, paint=True)


class SCENEWRIGHT_OT_auto_masks(bpy.types.Operator):
    """Find the objects in front of a plain background and give each its own mask"""

    bl_idname = "scenewright.auto_masks"
    bl_label = "Auto Masks"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context: bpy.types.Context) -> set[str]:
        return _make_mask(self, context, masks.create_auto_mask, paint=False)


def _make_mask(op: bpy.types.Operator, context: bpy.types.Context,
               make: Callable[[bpy.types.Image], bpy.types.Image], paint: bool) -> set[str]:
    props = context.scene.scenewright
    reference = reference_image(context)
    try:
        if reference is None:
            raise InputError("no reference image: pick or open one first")
        seg = make(reference)
    except InputError as exc:
        props.error = str(exc)
        op.report({"ERROR"}, str(exc))
        return {"CANCELLED"}
    props.reference_image, props.seg_image, props.error = reference, seg, ""
    _show_in_image_editors(context, seg, paint)
    op.report({"INFO"}, f"mask image {seg.name!r} created")
    return {"FINISHED"}


# ---- backend management --------------------------------------------------------------------------


def _set_status(text: str) -> None:
    bpy.context.window_manager.scenewright_backend_status = "\n".join(textwrap.wrap(text, 100))


def _backend_operator(op: bpy.types.Operator, context: bpy.types.Context, work: Callable[[BackendSettings], str]) -> set[str]:
    """Run `work(settings) -> status line` off the main thread; the status line shows in the preferences."""
    backend = get_preferences(context).backend_settings()
    errors: list[str] = []

    def on_error(message: str) -> None:
        errors.append(message)
        _set_status(f"Problem: {message}")
        if not bpy.app.background:
            notify("ERROR", message)

    _set_status("working...")
    run_task(lambda emit, cancelled: work(backend), on_error, _set_status)
    if errors:
        op.report({"ERROR"}, errors[0])
        return {"CANCELLED"}
    return {"FINISHED"}


def _health_line(backend: BackendSettings) -> str:
    info = BackendClient(backend.connect()).health()
    memory = ", ".join(f"{k} {v:.1f}" for k, v in info.memory.items())
    return f"Connected: SceneWright {info.version} (protocol {info.protocol_version}), model {info.model or 'none'}, " \
           f"device {info.device}" + (f", memory {memory}" if memory else "")


class SCENEWRIGHT_OT_check_backend(bpy.types.Operator):
    """Ask the backend for its health and version"""

    bl_idname = "scenewright.check_backend"
    bl_label = "Check Connection"

    def execute(self, context: bpy.types.Context) -> set[str]:
        return _backend_operator(self, context, _health_line)


class SCENEWRIGHT_OT_start_backend(bpy.types.Operator):
    """Start the local backend process now"""

    bl_idname = "scenewright.start_backend"
    bl_label = "Start Backend"

    def execute(self, context: bpy.types.Context) -> set[str]:
        return _backend_operator(self, context, lambda backend: _health_line(_local(backend, auto_start=True)))


class SCENEWRIGHT_OT_stop_backend(bpy.types.Operator):
    """Stop the local backend process, freeing its GPU memory"""

    bl_idname = "scenewright.stop_backend"
    bl_label = "Stop Backend"

    def execute(self, context: bpy.types.Context) -> set[str]:
        def work(backend: BackendSettings) -> str:
            stopped = stop_local_backend(backend.data_dir)
            return "Stopped the local backend." if stopped else "No local backend was running."

        return _backend_operator(self, context, work)


class SCENEWRIGHT_OT_unload_model(bpy.types.Operator):
    """Free the backend's GPU memory without stopping it; the model loads again with the next job"""

    bl_idname = "scenewright.unload_model"
    bl_label = "Unload Model"

    def execute(self, context: bpy.types.Context) -> set[str]:
        def work(backend: BackendSettings) -> str:
            running = BackendSettings(**{**backend.__dict__, "auto_start": False})  # nothing to unload if none runs
            info = BackendClient(running.connect()).unload_model()
            return f"Model unloaded (loaded now: {info.model or 'none'}); it loads again with the next job."

        return _backend_operator(self, context, work)


def _local(backend: BackendSettings, auto_start: bool) -> BackendSettings:
    return BackendSettings(**{**backend.__dict__, "mode": "LOCAL", "auto_start": auto_start})


class SCENEWRIGHT_OT_report(bpy.types.Operator):
    """Show a message from a background task in the status bar"""

    bl_idname = "scenewright.report"
    bl_label = "SceneWright Message"
    bl_options = {"INTERNAL"}

    level: bpy.props.StringProperty(default="INFO")
    message: bpy.props.StringProperty()

    def execute(self, context: bpy.types.Context) -> set[str]:
        self.report({self.level}, self.message)
        return {"FINISHED"}


CLASSES = (
    SCENEWRIGHT_OT_generate,
    SCENEWRIGHT_OT_cancel,
    SCENEWRIGHT_OT_import_job,
    SCENEWRIGHT_OT_create_blank_mask,
    SCENEWRIGHT_OT_auto_masks,
    SCENEWRIGHT_OT_check_backend,
    SCENEWRIGHT_OT_start_backend,
    SCENEWRIGHT_OT_stop_backend,
    SCENEWRIGHT_OT_unload_model,
    SCENEWRIGHT_OT_report,
)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)


def unregister() -> None:
    for task in _tasks:
        task.cancel_requested.set()
    _tasks.clear()
    if bpy.app.timers.is_registered(_pump):
        bpy.app.timers.unregister(_pump)
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
