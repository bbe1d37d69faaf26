"""The models a service knows, and the one pipeline it keeps in (GPU) memory.

Only one model is loaded at a time: loading another one, or unloading, first
waits for the running job (they share `gpu_lock` with the worker) and then
frees the old weights, so GPU memory really comes back without a restart.
"""

from __future__ import annotations

import gc
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..loading import MODEL_INDEX, ModelLoadError, resolve_device, resolve_source
from ..pipeline import ScenePipeline, shipped_model_path
from ..protocol import SHIPPED_MODELS

OOM_MESSAGE = (
    "out of memory: {detail}. Try fewer instances, fewer steps or a lower mesh_resolution, "
    "run the service with --dtype bf16, or free memory (close other GPU programs, or unload models "
    "with POST /v1/models/unload)"
)


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA raises OutOfMemoryError; MPS and the CPU allocator raise RuntimeErrors that say so."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def out_of_memory_message(exc: BaseException) -> str:
    return OOM_MESSAGE.format(detail=str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__)


class UnknownModel(LookupError):
    """The model name is neither known to the service nor a model folder or hub repo; the message says what to do."""


@dataclass
class ModelEntry:
    id: str
    source: str


class ModelManager:
    """Known model ids -> sources; loads one ScenePipeline on demand."""

    def __init__(self, initial: str, device: str = "auto", dtype: str | None = None) -> None:
        self.device = str(resolve_device(device))
        self.dtype = dtype
        self.gpu_lock = threading.RLock()
        self._known: dict[str, ModelEntry] = {}
        self._pipeline: ScenePipeline | None = None
        self._loaded: str | None = None
        for name in SHIPPED_MODELS:
            if (shipped_model_path(name) / MODEL_INDEX).is_file():
                self._known[name] = ModelEntry(name, str(shipped_model_path(name)))
        self.default_id = self.register(initial)

    @staticmethod
    def normalize(name: str) -> str:
        """The id under which a model name is known: local folders by their absolute path."""
        try:
            path = Path(name).expanduser()
            return str(path.resolve()) if name not in SHIPPED_MODELS and path.exists() else name
        except (OSError, ValueError, RuntimeError):  # too long, odd characters, "~nobody": not a folder
            return name

    def is_known(self, name: str) -> bool:
        return self.normalize(name) in self._known

    def register(self, name: str) -> str:
        """Make a model folder or hub repo id known (without loading it); returns its id.

        A hub id is fetched (or found in the cache) now, so a bad id fails here and not inside a job.
        """
        model_id = self.normalize(name)
        if model_id in self._known:
            return model_id
        if model_id in SHIPPED_MODELS:
            raise UnknownModel(f"the {model_id} model is not installed (expected at {shipped_model_path(model_id)})")
        try:
            folder = resolve_source(model_id)
        except (ModelLoadError, OSError, ValueError, RuntimeError) as exc:  # RuntimeError: "~nobody" paths
            raise UnknownModel(f"unknown model {name!r}: {exc}") from exc
        if not (folder / MODEL_INDEX).is_file():
            raise UnknownModel(f"{name!r} is a folder but not a model folder (no {MODEL_INDEX} in it)")
        self._known[model_id] = ModelEntry(model_id, model_id)
        return model_id

    @property
    def loaded(self) -> str | None:
        return self._loaded

    def listing(self) -> dict[str, Any]:
        models = [{"id": e.id, "source": e.source, "loaded": e.id == self._loaded} for e in self._known.values()]
        return {"models": models, "loaded": self._loaded, "default": self.default_id}

    def pipeline(self, name: str | None = None) -> ScenePipeline:
        """The pipeline for `name` (default: the service's model), loading it if another one is in memory."""
        model_id = self.normalize(name) if name else self.default_id
        with self.gpu_lock:
            if self._pipeline is None or self._loaded != model_id:
                if model_id not in self._known:
                    raise UnknownModel(f"unknown model {name!r}; load it first with POST /v1/models/load")
                self.unload()
                source = self._known[model_id].source
                try:
                    self._pipeline = ScenePipeline.from_pretrained(source, device=self.device, dtype=self.dtype)
                except Exception as exc:  # loading fails in many ways; all leave the service without a model
                    release_memory()
                    reason = out_of_memory_message(exc) if is_out_of_memory(exc) else str(exc)
                    raise ModelLoadError(f"cannot load model {model_id!r}: {reason}") from exc
                self._loaded = model_id
            return self._pipeline

    def unload(self) -> None:
        """Drop the loaded weights and hand cached GPU memory back to the driver."""
        with self.gpu_lock:
            self._pipeline = None
            self._loaded = None
            release_memory()

    def memory(self) -> dict[str, float]:
        gib = float(2**30)
        if self.device.startswith("cuda") and torch.cuda.is_available():
            free, total = torch.cuda.mem_get_info()
            return {
                "allocated_gb": torch.cuda.memory_allocated() / gib,
                "reserved_gb": torch.cuda.memory_reserved() / gib,
                "free_gb": free / gib,
                "total_gb": total / gib,
            }
        if self.device == "mps":
            return {"allocated_gb": torch.mps.current_allocated_memory() / gib}
        return {}


def release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
