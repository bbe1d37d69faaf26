"""Sampler benchmark: the whole generation (encode / denoise / decode) with random weights.

The models are built from configs, not loaded, so the benchmark needs no
checkpoint: "full" is the MIDI-3D architecture at its released size (the
reference constructors' defaults, ViT-L/14 encoders at 224 px), "small" a
miniature that runs on a laptop CPU in minutes. (The shipped default model is of
another kind, a shape codec under the DiT; its stage times come from
`scenewright predict`/`eval`, docs/performance.md.) Every stage is the pipeline's
own code (ScenePipeline.encode_conditions / denoise / decode), so the numbers
are those of the product, not of a re-implementation.
"""

from __future__ import annotations

import math
import os
import platform
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..loading import resolve_device, resolve_dtype
from ..models.dit import TripoSGDiTModel
from ..models.image_encoders import CLIPVisionModelWithProjection, Dinov2Model
from ..models.presets import PRESETS as MODEL_PRESETS
from ..models.presets import ModelPreset, build_components, give_random_field_a_surface
from ..models.vae import TripoSGVAEModel
from ..pipeline import PipelineOptions, ScenePipeline, default_dtype, synchronize
from ..protocol import GenerationSettings


@dataclass
class SamplerPreset:
    """Model sizes and the work of one benchmark generation."""

    models: ModelPreset
    tokens: int  # latent tokens per instance
    resolution: int  # marching-cubes cells per axis


PRESETS: dict[str, SamplerPreset] = {
    # MIDI-3D at release size: DiT width 2048 x 21 blocks, 2048 tokens x 64 channels, CLIP ViT-L/14 and
    # 7-channel DINOv2-L at 224 px, TripoSG VAE (decoder width 1024, 16 blocks), meshes at 256^3.
    "full": SamplerPreset(MODEL_PRESETS["full"], tokens=2048, resolution=256),
    # the MIDI-3D classes at the size of the vecset-VAE route (models/presets.py "small"), 128 tokens, 128^3
    "small": SamplerPreset(MODEL_PRESETS["small"], tokens=128, resolution=128),
}


def build_pipeline(preset: SamplerPreset, device: torch.device, dtype: torch.dtype, seed: int = 0) -> ScenePipeline:
    """Random-weight models of the preset's sizes, on the device, in the dtype, inside a ScenePipeline."""
    components = build_components(preset.models, seed=seed, device=device)
    for name in ("transformer", "vae", "image_encoder_1", "image_encoder_2"):
        components[name].to(dtype)
    return ScenePipeline(components, PipelineOptions(num_tokens=preset.tokens), source=f"random-{seed}")


def synthetic_scene(num_instances: int, size: int = 512, seed: int = 0) -> tuple[Image.Image, list[np.ndarray]]:
    """A scene image with N coloured rectangles on a grey floor and their masks."""
    rng = np.random.default_rng(seed)
    pixels = np.full((size, size, 3), 180, dtype=np.uint8)
    cols = math.ceil(math.sqrt(num_instances))
    cell = size // cols
    masks = []
    for i in range(num_instances):
        row, col = divmod(i, cols)
        mask = np.zeros((size, size), dtype=bool)
        mask[row * cell + cell // 6 : (row + 1) * cell - cell // 6, col * cell + cell // 5 : (col + 1) * cell - cell // 5] = True
        pixels[mask] = rng.integers(0, 255, 3)
        masks.append(mask)
    return Image.fromarray(pixels), masks


def parameter_counts(preset: SamplerPreset) -> dict[str, int]:
    """Parameters per component, counted on the meta device (no memory)."""
    spec = preset.models
    with torch.device("meta"):
        models = {
            "transformer": TripoSGDiTModel(spec.transformer),
            "vae": TripoSGVAEModel(spec.vae),
            "image_encoder_1": CLIPVisionModelWithProjection(spec.image_encoder_1),
            "image_encoder_2": Dinov2Model(spec.image_encoder_2),
        }
    return {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()}


def estimate_peak_bytes(preset: SamplerPreset, num_instances: int, dtype_bytes: int = 2, chunk_points: int = 131072) -> dict[str, float]:
    """Analytic ESTIMATE (not a measurement) of weights + the largest live activations.

    Denoise: with CFG the DiT sees B = 2N rows of T = tokens + 1; alive at the worst
    point are x, the num_layers // 2 long-skip tensors, q/k/v/out and the 4x feed-forward
    hidden with its activation: about (13 + num_layers // 2) B T width values, plus one
    float32 (B, T, width) from the float32 LayerNorms. Attention is fused (no T x T matrix).
    Decode: one query chunk through the VAE's cross-attention block: q/k-v/out and the 4x
    feed-forward hidden twice, about 12 x chunk x width_decoder values.
    """
    weights = sum(parameter_counts(preset).values()) * dtype_bytes
    dit, vae = preset.models.transformer, preset.models.vae
    rows, tokens, width = 2 * num_instances, preset.tokens + 1, dit.width
    denoise = (13 + dit.num_layers // 2) * rows * tokens * width * dtype_bytes + rows * tokens * width * 4
    decode = 12 * chunk_points * vae.width_decoder * dtype_bytes
    return {"weights": weights, "denoise_activations": denoise, "decode_activations": decode,
            "peak": weights + max(denoise, decode)}


class _PeakRSS:
    """Highest resident set size seen while active, sampled from /proc every few ms (Linux)."""

    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE")

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self._page

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(self.interval)

    def __enter__(self) -> "_PeakRSS":
        self.peak = self._rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())


def run_generation(pipe: ScenePipeline, num_instances: int, steps: int, guidance_scale: float, resolution: int,
                   guidance: str = "cfg") -> dict[str, float]:
    """One timed generation of N instances; seconds per stage (device synchronised between stages).

    `guidance` is a GenerationSettings.guidance ("cfg", or "timi": CFG plus TIMI at its default settings),
    through the pipeline's own `guiders`."""
    device = pipe.device
    image, masks = synthetic_scene(num_instances)
    times: dict[str, float] = {}
    clock = time.perf_counter()
    emb1, emb2 = pipe.encode_conditions(image, masks)
    synchronize(device)
    times["encode_s"] = time.perf_counter() - clock

    clock = time.perf_counter()
    layout = pipe.transformer.layout(pipe.transformer.default_mi_blocks())
    latents = pipe.prepare_latents(num_instances, seed=0)
    guiders = pipe.guiders(GenerationSettings(guidance_scale=guidance_scale, guidance=guidance), masks)
    latents = pipe.denoise(latents, emb1, emb2, steps, guiders, layout)
    synchronize(device)
    times["denoise_s"] = time.perf_counter() - clock

    give_random_field_a_surface(pipe.decoder, latents)
    clock = time.perf_counter()
    meshes = pipe.decode(latents, resolution)
    synchronize(device)
    times["decode_s"] = time.perf_counter() - clock
    times["meshes"] = sum(m is not None for m in meshes)
    return times


def run_sampler(
    config: str = "small",
    instances: tuple[int, ...] = (1, 3, 5, 8),
    steps: int = 50,
    guidance_scale: float = 7.0,
    device: str = "auto",
    dtype: str | None = None,
    resolution: int | None = None,
    guidance: str = "cfg",
) -> dict[str, Any]:
    """Build the preset once, warm up, then one timed generation per instance count."""
    preset = PRESETS[config]
    dev = resolve_device(device)
    dt = default_dtype(dev) if dtype is None else resolve_dtype(dtype)
    resolution = resolution or preset.resolution
    pipe = build_pipeline(preset, dev, dt)
    run_generation(pipe, 1, 2, guidance_scale, min(resolution, 32), guidance)  # warm-up: kernels, allocator, caches

    rows = []
    for n in instances:
        if dev.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(dev)
        with _PeakRSS() as rss:
            row = run_generation(pipe, n, steps, guidance_scale, resolution, guidance)
        row["instances"] = n
        row["total_s"] = row["encode_s"] + row["denoise_s"] + row["decode_s"]
        row["peak_rss_bytes"] = rss.peak
        if dev.type == "cuda":
            row["peak_cuda_bytes"] = torch.cuda.max_memory_allocated(dev)
        row["estimate_bytes"] = estimate_peak_bytes(preset, n, torch.finfo(dt).bits // 8)["peak"]
        rows.append(row)
    return {
        "config": config,
        "device": dev.type,
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "dtype": str(dt).replace("torch.", ""),
        "steps": steps,
        "guidance_scale": guidance_scale,
        "guidance": guidance,
        "tokens": preset.tokens,
        "resolution": resolution,
        "mi_blocks": pipe.transformer.default_mi_blocks(),
        "parameters": parameter_counts(preset),
        "rows": rows,
    }


def format_sampler(result: dict[str, Any]) -> str:
    r = result
    params = r["parameters"]
    memory = "peak CUDA MB" if r["device"] == "cuda" else "peak RSS MB"
    lines = [
        f"sampler benchmark: config {r['config']}, {r['device']} ({r['device_name']}, {r['cpu_threads']} threads), "
        f"{r['dtype']}, {r['steps']} steps, CFG {r['guidance_scale']}{' + TIMI' if r['guidance'] == 'timi' else ''}, "
        f"{r['tokens']} tokens/instance, "
        f"MI blocks {r['mi_blocks']}, meshes at {r['resolution']}^3",
        "parameters (M): " + ", ".join(f"{k} {v / 1e6:.1f}" for k, v in params.items())
        + f", total {sum(params.values()) / 1e6:.1f}",
        f"  {'N':>3}{'encode s':>10}{'denoise s':>11}{'s/step':>8}{'decode s':>10}{'total s':>9}{memory:>14}{'estimate MB':>13}",
    ]
    for row in r["rows"]:
        peak = row.get("peak_cuda_bytes", row["peak_rss_bytes"])
        lines.append(
            f"  {row['instances']:>3}{row['encode_s']:>10.2f}{row['denoise_s']:>11.2f}{row['denoise_s'] / r['steps']:>8.3f}"
            f"{row['decode_s']:>10.2f}{row['total_s']:>9.2f}{peak / 2**20:>14.0f}{row['estimate_bytes'] / 2**20:>13.0f}"
        )
    return "\n".join(lines)

