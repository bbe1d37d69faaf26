"""The wire format between the Blender add-on and the backend service.

This module is the single definition of field names, limits and versions.
It uses the standard library only: the service imports it, and the add-on
build vendors a copy of this very file (the add-on never imports torch).
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

PROTOCOL_VERSION = 1
API_PREFIX = "/v1"
RESULT_FORMAT = "scenewright-result/1"

# The service writes this file into its data dir on start so that a client can find it.
STATE_FILE_NAME = "service.json"
TOKEN_ENV_VAR = "SCENEWRIGHT_TOKEN"


def default_data_dir() -> Path:
    """Where the service keeps jobs and STATE_FILE_NAME unless told otherwise; the add-on looks there too."""
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "scenewright"

# Limits shared by both sides: the add-on checks them before uploading,
# the service enforces them and answers 4xx.
MAX_INSTANCES = 16
MAX_UPLOAD_BYTES = 64 * 1024 * 1024
MAX_IMAGE_SIDE = 4096
MAX_LABEL_LENGTH = 63  # Blender's object and mesh names hold 63 bytes
MIN_IMAGE_SIDE = 16

JOB_STATES = ("queued", "running", "succeeded", "failed", "cancelled")
FINISHED_STATES = ("succeeded", "failed", "cancelled")

# The models the package ships, by the name the CLI, the service and the add-on take (with what each is);
# any other model value is a model folder or a hub repo id such as VAST-AI/MIDI-3D.
SHIPPED_MODELS = {
    "default": "the shipped model: multi-instance (MIDI) attention, for blockout-style images",
    "default-sca": "the shipped scene-context (I-Scene) attention variant of the default model",
}

# Pipeline stages reported in job status, in order.
STAGES = ("queued", "preprocess", "encode", "denoise", "decode", "place", "export", "done")


class SettingsError(ValueError):
    """A generation setting is missing, of the wrong type or out of range; the message says which."""


@dataclass(frozen=True)
class SettingRange:
    """Inclusive numeric range of one setting, shown to users in error messages."""

    low: float
    high: float


SETTING_RANGES: dict[str, SettingRange] = {
    "steps": SettingRange(1, 200),
    "guidance_scale": SettingRange(0.0, 30.0),
    "seed": SettingRange(0, 2**31 - 1),
    "mesh_resolution": SettingRange(16, 512),
    "max_faces": SettingRange(100, 10_000_000),
    "candidates": SettingRange(1, 16),
    "scene_size_m": SettingRange(0.05, 1000.0),
    "timi.layers": SettingRange(0, 255),
    "timi.steps": SettingRange(1, 200),
    "timi.alpha": SettingRange(1e-4, 10.0),
    "timi.sigma": SettingRange(0.0, 10.0),
    "timi.momentum": SettingRange(0.0, 0.999),
}

# "cfg": classifier-free guidance; "timi": CFG plus TIMI's training-free instance guidance (docs/guidance.md)
GUIDANCE_METHODS = ("cfg", "timi")


@dataclass
class TimiSettings:
    """TIMI's parameters, defaults from its paper (section 5.1); used when `guidance` is "timi"."""

    layers: int = 4  # the cross-attention of blocks 0..layers is guided
    steps: int = 15  # the first `steps` sampler steps are guided
    alpha: float = 0.1  # largest update relative to the latents' standard deviation (eq. 6)
    sigma: float = 1.5  # standard deviation of the gradient's Gaussian smoothing (eq. 5)
    momentum: float = 0.9  # beta of the update's momentum (eq. 7)
    sgu: bool = True  # False: plain fixed-step gradient descent, without SGU (the paper's ablation)

    @classmethod
    def from_dict(cls, data: Any) -> "TimiSettings":
        if not isinstance(data, dict):
            raise SettingsError("timi must be an object such as {\"alpha\": 0.1}")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise SettingsError(f"unknown timi setting(s) {unknown}; known: {sorted(known)}")
        out = cls()
        for name in ("layers", "steps"):
            if data.get(name) is not None:
                setattr(out, name, _int_in_range(f"timi.{name}", data[name]))
        for name in ("alpha", "sigma", "momentum"):
            if data.get(name) is not None:
                setattr(out, name, _float_in_range(f"timi.{name}", data[name]))
        if data.get("sgu") is not None:
            if not isinstance(data["sgu"], bool):
                raise SettingsError(f"timi.sgu must be true or false, got {data['sgu']!r}")
            out.sgu = data["sgu"]
        return out


@dataclass
class GenerationSettings:
    """User-facing knobs of one generation job.

    `None` means "the model's default" (steps, guidance, multi-instance blocks)
    or "the documented default" (scene size, see placement).
    """

    steps: int | None = None
    guidance_scale: float | None = None
    seed: int = 0
    mi_blocks: list[int] | None = None
    mesh_resolution: int | None = None
    max_faces: int | None = None  # decimate each object to at most this many faces; None: the model's default
    refine_poses: bool | None = None  # fit each instance's pose to its mask after the camera solve; None: the model's
    candidates: int | None = None  # scenes sampled, the one agreeing most with the others kept; None: the model's
    scene_size_m: float | None = None
    model: str | None = None
    labels: list[str] | None = None  # a name per instance, in instance order (ascending seg value, or mask order)
    guidance: str = "cfg"  # one of GUIDANCE_METHODS
    timi: TimiSettings = field(default_factory=TimiSettings)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "GenerationSettings":
        """Validate untrusted JSON and build settings; raises SettingsError naming the bad field."""
        data = dict(data or {})
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SettingsError(f"unknown setting(s) {unknown}; known settings are {sorted(known)}")
        out = cls()
        for name in ("steps", "seed", "mesh_resolution", "max_faces", "candidates"):
            if name in data and data[name] is not None:
                setattr(out, name, _int_in_range(name, data[name]))
        for name in ("guidance_scale", "scene_size_m"):
            if name in data and data[name] is not None:
                setattr(out, name, _float_in_range(name, data[name]))
        if data.get("seed") is None and "seed" in data:
            raise SettingsError("seed must be an integer, not null")
        if data.get("mi_blocks") is not None:
            blocks = data["mi_blocks"]
            if not isinstance(blocks, list) or not all(isinstance(b, int) and not isinstance(b, bool) for b in blocks):
                raise SettingsError("mi_blocks must be a list of block indices (integers), e.g. [8, 9, 10, 11, 12]")
            if any(b < 0 or b > 255 for b in blocks) or len(set(blocks)) != len(blocks):
                raise SettingsError("mi_blocks must hold distinct block indices between 0 and 255")
            out.mi_blocks = sorted(blocks)
        if data.get("model") is not None:
            model = data["model"]
            if not isinstance(model, str) or not model.strip() or len(model) > 512:
                raise SettingsError("model must be a non-empty string of at most 512 characters")
            out.model = model
        if data.get("refine_poses") is not None:
            if not isinstance(data["refine_poses"], bool):
                raise SettingsError(f"refine_poses must be true or false, got {data['refine_poses']!r}")
            out.refine_poses = data["refine_poses"]
        if data.get("labels") is not None:
            labels = data["labels"]
            if not isinstance(labels, list) or len(labels) > MAX_INSTANCES or not all(
                    isinstance(label, str) and 0 < len(label.strip()) <= MAX_LABEL_LENGTH for label in labels):
                raise SettingsError(f"labels must be a list of at most {MAX_INSTANCES} names (1 to {MAX_LABEL_LENGTH} "
                                    "characters each), one per instance, e.g. [\"chair\", \"table\"]")
            out.labels = [label.strip() for label in labels]
        if data.get("guidance") is not None:
            if data["guidance"] not in GUIDANCE_METHODS:
                raise SettingsError(f"guidance must be one of {list(GUIDANCE_METHODS)}, got {data['guidance']!r}")
            out.guidance = data["guidance"]
        if data.get("timi") is not None:
            out.timi = TimiSettings.from_dict(data["timi"])
        return out


def _int_in_range(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (isinstance(value, float) and not value.is_integer()):
        raise SettingsError(f"{name} must be an integer, got {value!r}")
    rng = SETTING_RANGES[name]
    if not rng.low <= value <= rng.high:
        raise SettingsError(f"{name} must be between {int(rng.low)} and {int(rng.high)}, got {value}")
    return int(value)


def _float_in_range(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SettingsError(f"{name} must be a number, got {value!r}")
    value = float(value)
    rng = SETTING_RANGES[name]
    if math.isnan(value) or math.isinf(value) or not rng.low <= value <= rng.high:
        raise SettingsError(f"{name} must be a finite number between {rng.low} and {rng.high}, got {value}")
    return value


@dataclass
class CameraSpec:
    """A camera in Blender's convention (PROTOCOL.md `scene.json` camera).

    matrix_world: 4x4 row-major camera object matrix; the camera looks down its
    local -Z axis and local +Y is image up. fov_deg spans the larger image side
    when sensor_fit is AUTO (the horizontal side for landscape and square images).
    """

    matrix_world: list[list[float]]
    fov_deg: float
    resolution: tuple[int, int]
    sensor_fit: str = "AUTO"

    def to_dict(self) -> dict[str, Any]:
        return {
            "resolution": [int(self.resolution[0]), int(self.resolution[1])],
            "sensor_fit": self.sensor_fit,
            "fov_deg": float(self.fov_deg),
            "matrix_world": [[float(v) for v in row] for row in self.matrix_world],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CameraSpec":
        return cls(
            matrix_world=[[float(v) for v in row] for row in data["matrix_world"]],
            fov_deg=float(data["fov_deg"]),
            resolution=(int(data["resolution"][0]), int(data["resolution"][1])),
            sensor_fit=str(data.get("sensor_fit", "AUTO")),
        )


@dataclass
class InstanceRecord:
    """One generated object in a result: `node` is its node name in the GLB."""

    id: int
    node: str
    label: str | None = None
    # 4x4 row-major object matrix (Blender matrix_world) placing the mesh, whose
    # origin is at its bottom centre, in the scene (metres, +Z up, ground z = 0).
    transform: list[list[float]] = field(default_factory=lambda: [[1.0 if i == j else 0.0 for j in range(4)] for i in range(4)])
    # Mesh-local axis-aligned bounds [[xmin, ymin, zmin], [xmax, ymax, zmax]].
    bounds: list[list[float]] | None = None
    support: int | None = None  # id of the instance it rests on, None for the ground
    empty: bool = False
    # sRGB 0..1: the mean colour of the reference pixels under the instance's mask (its edge left out)
    color: list[float] | None = None


@dataclass
class ResultManifest:
    """The JSON document that travels with a job's GLB."""

    job_id: str
    instances: list[InstanceRecord]
    settings: dict[str, Any]
    frame: dict[str, Any]
    camera: dict[str, Any] | None = None
    timings: dict[str, float] = field(default_factory=dict)
    model: str | None = None
    format: str = RESULT_FORMAT

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ResultManifest":
        if data.get("format") != RESULT_FORMAT:
            raise ValueError(f"unsupported result format {data.get('format')!r}; expected {RESULT_FORMAT!r}")
        fields = dict(data)
        fields["instances"] = [InstanceRecord(**inst) for inst in data["instances"]]
        return cls(**fields)


# HTTP endpoints (all under API_PREFIX; every request carries "Authorization: Bearer <token>").
ENDPOINTS = {
    "health": "GET /v1/health",  # -> HealthInfo
    "models": "GET /v1/models",  # -> {"models": [{"id", "source", "loaded"}], "loaded": id | None, "default": id}
    "load_model": "POST /v1/models/load",  # JSON {"model": id} -> HealthInfo
    "unload_model": "POST /v1/models/unload",  # -> HealthInfo
    "submit": "POST /v1/jobs",  # multipart: image (PNG), seg (PNG) or masks (PNG, repeated), settings (JSON text) -> 202 JobStatus
    "jobs": "GET /v1/jobs",  # -> {"jobs": [JobStatus, ...]} newest first
    "job": "GET /v1/jobs/{job_id}",  # -> JobStatus
    "cancel": "POST /v1/jobs/{job_id}/cancel",  # -> JobStatus
    "result_glb": "GET /v1/jobs/{job_id}/result.glb",  # one named node per instance
    "result_json": "GET /v1/jobs/{job_id}/result.json",  # -> ResultManifest
}


@dataclass
class JobStatus:
    """What GET /v1/jobs/{id} answers."""

    job_id: str
    state: str  # one of JOB_STATES
    stage: str = "queued"  # one of STAGES
    step: int = 0
    total: int = 0
    message: str = ""
    num_instances: int = 0
    settings: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    created_at: float = 0.0
    finished_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "JobStatus":
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


@dataclass
class HealthInfo:
    """What GET /v1/health answers; the add-on compares protocol_version with its own."""

    status: str
    protocol_version: int
    version: str
    model: str | None
    device: str
    memory: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
