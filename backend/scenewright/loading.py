"""Model folders and hub repo ids -> our modules, and back.

A model is a diffusers-style folder: model_index.json plus one subfolder per
component holding its config (config.json, scheduler_config.json or
preprocessor_config.json) and safetensors weights. The same code reads the
VAST-AI/MIDI-3D hub snapshot and the folders we write ourselves. Each component's
class comes from its own config (`_class_name`, transformers' `architectures` or
`image_processor_type`) through one registry of our classes; the module paths in
model_index.json are ignored, since they name the reference code's packages.
"""

from __future__ import annotations

import importlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

MODEL_INDEX = "model_index.json"
# model_index.json key: component name -> folder relative to the model folder, for a component two shipped
# models share (their shape codec) instead of each holding a copy
SHARED_COMPONENTS = "_component_paths"

# Files snapshot_download fetches: configs and safetensors weights (single or sharded), nothing else.
HUB_ALLOW_PATTERNS = [
    MODEL_INDEX,
    "*/config.json",
    "*/scheduler_config.json",
    "*/preprocessor_config.json",
    "*/model.safetensors",
    "*/model-*.safetensors",
    "*/model.safetensors.index.json",
    "*/diffusion_pytorch_model.safetensors",
    "*/diffusion_pytorch_model-*.safetensors",
    "*/diffusion_pytorch_model.safetensors.index.json",
]

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

_DTYPES = {
    "fp32": torch.float32, "float32": torch.float32,
    "fp16": torch.float16, "float16": torch.float16,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
}  # fmt: skip


class ModelLoadError(RuntimeError):
    """A model source or checkpoint cannot be used; the message says which and what to do."""


@dataclass(frozen=True)
class _Kind:
    """How one component class is stored on disk and which of our classes reads it."""

    module: str
    config_class: str
    model_class: str | None  # None: the config itself is the component (image processors)
    config_file: str
    weights_file: str | None = None
    model_type: str | None = None  # set for transformers-style components (`architectures` + `model_type`)

    def resolve(self, name: str) -> type:
        return getattr(importlib.import_module(self.module), name)


# Keyed by the class name written in the component's config. Modules are imported only when used.
_REGISTRY: dict[str, _Kind] = {
    "TripoSGDiTModel": _Kind(
        "scenewright.models.dit", "TripoSGDiTConfig", "TripoSGDiTModel", "config.json",
        "diffusion_pytorch_model.safetensors",
    ),
    "TripoSGVAEModel": _Kind(
        "scenewright.models.vae", "TripoSGVAEConfig", "TripoSGVAEModel", "config.json",
        "diffusion_pytorch_model.safetensors",
    ),
    "RectifiedFlowScheduler": _Kind(
        "scenewright.schedulers.rectified_flow", "RectifiedFlowSchedulerConfig", "RectifiedFlowScheduler",
        "scheduler_config.json",
    ),
    "CLIPVisionModelWithProjection": _Kind(
        "scenewright.models.image_encoders", "CLIPVisionConfig", "CLIPVisionModelWithProjection", "config.json",
        "model.safetensors", model_type="clip_vision_model",
    ),
    "Dinov2Model": _Kind(
        "scenewright.models.image_encoders", "Dinov2Config", "Dinov2Model", "config.json",
        "model.safetensors", model_type="dinov2",
    ),
    "ShapeCodec": _Kind(
        "scenewright.models.shape_codec", "ShapeCodecConfig", "ShapeCodec", "config.json",
        "diffusion_pytorch_model.safetensors",
    ),
    "BlockoutConditionEncoder": _Kind(
        "scenewright.models.condition_encoder", "ConditionEncoderConfig", "BlockoutConditionEncoder", "config.json",
        "diffusion_pytorch_model.safetensors",
    ),
    "CameraEstimator": _Kind(
        "scenewright.models.camera_estimator", "CameraEstimatorConfig", "CameraEstimator", "config.json",
        "diffusion_pytorch_model.safetensors",
    ),
    "PoseHead": _Kind(
        "scenewright.models.pose_head", "PoseHeadConfig", "PoseHead", "config.json",
        "diffusion_pytorch_model.safetensors",
    ),
    "CLIPImageProcessor": _Kind(
        "scenewright.image_processing", "ImageProcessorConfig", None, "preprocessor_config.json"
    ),
    "BitImageProcessor": _Kind(
        "scenewright.image_processing", "ImageProcessorConfig", None, "preprocessor_config.json"
    ),
}  # fmt: skip

_CONFIG_FILES = ("config.json", "scheduler_config.json", "preprocessor_config.json")


# --------------------------------------------------------------------------- sources


def resolve_source(source: str | Path, revision: str | None = None) -> Path:
    """A local folder, or a hub repo id fetched into (or found in) the Hugging Face cache.

    The hub path honours HF_HUB_OFFLINE, HF_HOME and HF_HUB_CACHE as huggingface_hub
    reads them; only configs and safetensors weights are downloaded.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    text = str(source)
    if not _REPO_ID.match(text) or path.exists():
        raise ModelLoadError(f"model source {text!r} is neither a folder nor a hub repo id like 'VAST-AI/MIDI-3D'")
    return _snapshot(text, revision)


def _snapshot(repo_id: str, revision: str | None) -> Path:
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    alternatives = "or pass the path of a local model folder instead of the repo id"
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=HUB_ALLOW_PATTERNS))
    except LocalEntryNotFoundError as exc:
        if constants.HF_HUB_OFFLINE:
            why, fix = "HF_HUB_OFFLINE is set", f"download it once with network access (`hf download {repo_id}`)"
        else:
            why, fix = "the hub could not be reached", "connect to the network and retry"
        raise ModelLoadError(
            f"{repo_id} is not in the Hugging Face cache at {constants.HF_HUB_CACHE} and {why}: {fix}, "
            f"point HF_HUB_CACHE/HF_HOME at a cache that holds it, {alternatives}."
        ) from exc
    except GatedRepoError as exc:
        raise ModelLoadError(
            f"{repo_id} is gated: accept its terms on huggingface.co and log in (`hf auth login`), {alternatives}."
        ) from exc
    except RepositoryNotFoundError as exc:
        raise ModelLoadError(
            f"{repo_id} does not exist on the Hugging Face hub (or is private: log in with `hf auth login`); "
            f"check the spelling, {alternatives}."
        ) from exc
    except RevisionNotFoundError as exc:
        raise ModelLoadError(f"{repo_id} has no revision {revision!r}") from exc
    except HfHubHTTPError as exc:
        raise ModelLoadError(f"downloading {repo_id} failed ({exc}); retry, {alternatives}.") from exc


# --------------------------------------------------------------------------- dtype / device


def resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype:
    """torch dtype or one of fp32/fp16/bf16 (and their long names); None means float32."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype not in _DTYPES.values():
            raise ValueError(f"unsupported dtype {dtype} (use float32, float16 or bfloat16)")
        return dtype
    try:
        return _DTYPES[dtype.lower()]
    except KeyError:
        raise ValueError(f"unsupported dtype {dtype!r} (use fp32, fp16 or bf16)") from None


def resolve_device(device: torch.device | str = "auto") -> torch.device:
    """'auto' picks cuda, then mps, then cpu; an explicit device must be available."""
    if str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {dev} requested but CUDA is not available (use device='cpu' or 'auto')")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ModelLoadError(f"device {dev} requested but MPS is not available (use device='cpu' or 'auto')")
    return dev


# --------------------------------------------------------------------------- reading


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from exc


def _component_config(folder: Path) -> tuple[str, _Kind, dict[str, Any]]:
    for name in _CONFIG_FILES:
        if (folder / name).is_file():
            config = _read_json(folder / name)
            break
    else:
        raise ModelLoadError(f"{folder} holds none of {', '.join(_CONFIG_FILES)}: not a model component folder")
    class_name = config.get("_class_name") or (config.get("architectures") or [None])[0]
    class_name = class_name or config.get("image_processor_type")
    if class_name not in _REGISTRY:
        raise ModelLoadError(
            f"{folder / name}: unknown component class {class_name!r}; known: {', '.join(sorted(_REGISTRY))}"
        )
    return class_name, _REGISTRY[class_name], config


def _weight_files(folder: Path, weights_file: str) -> list[Path]:
    single = folder / weights_file
    if single.is_file():
        return [single]
    index = folder / f"{weights_file}.index.json"
    if index.is_file():
        shards = sorted(set(_read_json(index)["weight_map"].values()))
        return [folder / shard for shard in shards]
    present = sorted(p.name for p in folder.iterdir())
    raise ModelLoadError(
        f"{folder}: no {weights_file} (or its sharded index); the folder holds {present}. "
        "Only safetensors weights are read."
    )


def _read_weights(files: list[Path], device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """All tensors of the checkpoint, floating ones converted to `dtype` (hub files may be fp16/bf16)."""
    state: dict[str, torch.Tensor] = {}
    for file in files:
        with safe_open(file, framework="pt") as f:
            for key in f.keys():
                tensor = f.get_tensor(key)
                state[key] = tensor.to(device=device, dtype=dtype if tensor.is_floating_point() else None)
    return state


def _load_strict(model: nn.Module, state: dict[str, torch.Tensor], where: Path) -> None:
    """Assign the checkpoint to a meta-device model; any missing, unexpected or misshaped key is an error."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshaped = [
        f"{k} {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(state) & set(expected))
        if state[k].shape != expected[k].shape
    ]
    problems = [
        f"{label} ({len(keys)}): {', '.join(keys)}"
        for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", misshaped))
        if keys
    ]
    if problems:
        raise ModelLoadError(f"checkpoint {where} does not fit {type(model).__name__}: " + "; ".join(problems))
    model.load_state_dict(state, strict=True, assign=True)
    left = [name for name, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if left:
        raise ModelLoadError(f"{type(model).__name__} has tensors not stored in checkpoints: {', '.join(left)}")


def load_component(
    folder: str | Path,
    *,
    dtype: torch.dtype | str | None = torch.float32,
    device: torch.device | str = "cpu",
) -> Any:
    """One component folder -> an eval-mode module on `device` in `dtype`, a scheduler, or an ImageProcessorConfig."""
    folder = Path(folder)
    class_name, kind, config_dict = _component_config(folder)
    config = kind.resolve(kind.config_class).from_dict(config_dict)
    if kind.model_class is None:
        return config
    cls = kind.resolve(kind.model_class)
    if kind.weights_file is None:
        return cls(config)
    dev, dt = resolve_device(device), resolve_dtype(dtype)
    with torch.device("meta"):
        model = cls(config)
    _load_strict(model, _read_weights(_weight_files(folder, kind.weights_file), dev, dt), folder)
    return model.eval()


def read_model_index(folder: str | Path) -> dict[str, Any]:
    """model_index.json of a model folder (components and any extra keys written by save_pipeline)."""
    path = Path(folder) / MODEL_INDEX
    if not path.is_file():
        raise ModelLoadError(f"{folder} has no {MODEL_INDEX}: not a pipeline folder")
    return _read_json(path)


def load_components(
    source: str | Path,
    *,
    dtype: torch.dtype | str | None = torch.float32,
    device: torch.device | str = "cpu",
    revision: str | None = None,
) -> dict[str, Any]:
    """Every component listed in model_index.json of a folder or hub repo, by component name."""
    folder = resolve_source(source, revision)
    index = read_model_index(folder)
    shared = index.get(SHARED_COMPONENTS, {})
    components = {}
    for name, entry in index.items():
        if name.startswith("_") or not isinstance(entry, list) or entry[-1] is None:
            continue  # metadata, extra keys, or an absent optional component
        component_dir = folder / shared.get(name, name)
        if not component_dir.is_dir():
            raise ModelLoadError(f"{folder / MODEL_INDEX} lists {name!r} but {component_dir} does not exist")
        components[name] = load_component(component_dir, dtype=dtype, device=device)
    return components


# --------------------------------------------------------------------------- writing


def _kind_of(obj: Any) -> tuple[str, _Kind]:
    class_name = getattr(obj, "image_processor_type", None) or type(obj).__name__
    if class_name not in _REGISTRY:
        raise TypeError(f"cannot save {type(obj).__name__}: not a registered component class")
    return class_name, _REGISTRY[class_name]


def save_component(obj: Any, folder: str | Path) -> None:
    """Write one component in the hub layout: its config file and (for modules) safetensors weights."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    class_name, kind = _kind_of(obj)
    if kind.model_class is None:
        config = obj.to_dict()
    elif kind.model_type is not None:
        config = {"architectures": [class_name], "model_type": kind.model_type, **obj.config.to_dict()}
    else:
        config = {"_class_name": class_name, **obj.config.to_dict()}
    (folder / kind.config_file).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    if kind.weights_file is not None:
        state = {k: v.detach().to("cpu").contiguous() for k, v in obj.state_dict().items()}
        save_file(state, str(folder / kind.weights_file))


def save_pipeline(components: dict[str, Any], folder: str | Path, extra_index: dict[str, Any] | None = None,
                  shared: dict[str, str] | None = None) -> None:
    """Write every component plus model_index.json, readable again by load_components (and by hub tooling).

    `shared` names components not written here but read from another folder (relative to this one).
    """
    folder = Path(folder)
    shared = shared or {}
    index: dict[str, Any] = {"_class_name": "ScenePipeline"}
    for name, obj in components.items():
        class_name, kind = _kind_of(obj)
        library = "transformers" if kind.model_type or kind.model_class is None else kind.module
        index[name] = [library, class_name]
        if name not in shared:
            save_component(obj, folder / name)
    if shared:
        index[SHARED_COMPONENTS] = dict(shared)
    index.update(extra_index or {})
    (folder / MODEL_INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
