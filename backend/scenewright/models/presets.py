"""Named model sizes, so tests, benchmarks and training build the same architectures.

- "tiny": the size of the MIDI-3D golden replica; random weights make a test model in a second.
- "small": the MIDI-3D classes at a size a GPU could train from scratch (the vecset-VAE route of
  docs/training.md).
- "full": the released MIDI-3D sizes (TripoSG DiT 2048 x 21 blocks, ViT-L CLIP, DINOv2-L with 7 channels).

`DEFAULT_MODEL` is the architecture of the model this project trains on a CPU and ships: the
same TripoSG DiT over shape-codec latents, with the CPU-sized condition encoder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..image_processing import ImageProcessorConfig
from ..schedulers.rectified_flow import RectifiedFlowScheduler, RectifiedFlowSchedulerConfig
from .condition_encoder import BlockoutConditionEncoder, ConditionEncoderConfig
from .dit import TripoSGDiTConfig, TripoSGDiTModel
from .shape_codec import ShapeCodecConfig
from .image_encoders import CLIPVisionConfig, CLIPVisionModelWithProjection, Dinov2Config, Dinov2Model
from .vae import TripoSGVAEConfig, TripoSGVAEModel

CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


@dataclass
class ModelPreset:
    transformer: TripoSGDiTConfig
    vae: TripoSGVAEConfig
    image_encoder_1: CLIPVisionConfig
    image_encoder_2: Dinov2Config
    image_size: int  # crop size of both feature extractors
    scheduler_shift: float = 1.0


PRESETS: dict[str, ModelPreset] = {
    "tiny": ModelPreset(
        TripoSGDiTConfig(num_attention_heads=4, width=64, in_channels=8, num_layers=5, cross_attention_dim=32, cross_attention_2_dim=48),
        TripoSGVAEConfig(latent_channels=8, num_attention_heads=4, width_encoder=32, width_decoder=48, num_layers_encoder=1, num_layers_decoder=2),
        CLIPVisionConfig(hidden_size=32, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, image_size=56, projection_dim=32),
        Dinov2Config(hidden_size=48, num_hidden_layers=2, num_attention_heads=2, image_size=70),
        image_size=56,
    ),
    "small": ModelPreset(
        TripoSGDiTConfig(num_attention_heads=8, width=256, in_channels=16, num_layers=8, cross_attention_dim=128, cross_attention_2_dim=192),
        TripoSGVAEConfig(latent_channels=16, num_attention_heads=8, width_encoder=128, width_decoder=192, num_layers_encoder=2, num_layers_decoder=3),
        CLIPVisionConfig(hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4, image_size=112, projection_dim=128),
        Dinov2Config(hidden_size=192, num_hidden_layers=4, num_attention_heads=3, image_size=112),
        image_size=112,
    ),
    "full": ModelPreset(
        TripoSGDiTConfig(num_attention_heads=16, width=2048, in_channels=64, num_layers=21, cross_attention_dim=768, cross_attention_2_dim=1024),
        TripoSGVAEConfig(),
        CLIPVisionConfig(),
        Dinov2Config(),
        image_size=224,
    ),
}


@dataclass
class CodecModelPreset:
    """The default model's architecture: DiT, condition encoder and the shape codec's layout."""

    transformer: TripoSGDiTConfig
    condition_encoder: ConditionEncoderConfig
    shape_codec: ShapeCodecConfig
    scheduler_shift: float = 1.0


def codec_model_preset(codec: ShapeCodecConfig | None = None, condition_extras: bool = False) -> CodecModelPreset:
    """The default model's architecture around a shape codec's latent layout (its tokens x channels);
    `condition_extras` turns on the condition encoder's mask geometry, coordinate planes and camera head
    (docs/training.md; off in the shipped models)."""
    condition = ConditionEncoderConfig(mask_geometry=condition_extras, coordinates=condition_extras,
                                       camera_head=condition_extras)
    codec = codec or ShapeCodecConfig()
    transformer = TripoSGDiTConfig(num_attention_heads=8, width=256, in_channels=codec.channels, num_layers=8,
                                   cross_attention_dim=condition.global_dim,
                                   cross_attention_2_dim=condition.token_dim, latent_positions=codec.tokens)
    return CodecModelPreset(transformer, condition, codec)


DEFAULT_MODEL = codec_model_preset()


def build_codec_model(preset: CodecModelPreset = DEFAULT_MODEL, seed: int = 0,
                      device: str | torch.device = "cpu") -> dict[str, Any]:
    """Randomly initialised DiT and condition encoder plus the scheduler of the default model's kind
    (the shape codec is fitted, not initialised: training adds it)."""
    torch.manual_seed(seed)
    with torch.device(device):
        components: dict[str, Any] = {
            "transformer": TripoSGDiTModel(preset.transformer),
            "condition_encoder": BlockoutConditionEncoder(preset.condition_encoder),
        }
    components["scheduler"] = RectifiedFlowScheduler(RectifiedFlowSchedulerConfig(shift=preset.scheduler_shift))
    return components


def feature_extractor_configs(image_size: int) -> tuple[ImageProcessorConfig, ImageProcessorConfig]:
    """CLIP- and DINO-style preprocessing at `image_size` (DINO resizes to 8/7 of it, then crops)."""
    clip = ImageProcessorConfig(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
                                image_mean=CLIP_MEAN, image_std=CLIP_STD)
    dino = ImageProcessorConfig(image_processor_type="BitImageProcessor", size={"shortest_edge": image_size * 8 // 7},
                                crop_size={"height": image_size, "width": image_size}, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)
    return clip, dino


def build_components(preset: str | ModelPreset, seed: int = 0, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Randomly initialised components of a preset, keyed like model_index.json."""
    spec = PRESETS[preset] if isinstance(preset, str) else preset
    torch.manual_seed(seed)
    with torch.device(device):
        components: dict[str, Any] = {
            "transformer": TripoSGDiTModel(spec.transformer),
            "vae": TripoSGVAEModel(spec.vae),
            "image_encoder_1": CLIPVisionModelWithProjection(spec.image_encoder_1),
            "image_encoder_2": Dinov2Model(spec.image_encoder_2),
        }
    components["scheduler"] = RectifiedFlowScheduler(RectifiedFlowSchedulerConfig(shift=spec.scheduler_shift))
    components["feature_extractor_1"], components["feature_extractor_2"] = feature_extractor_configs(spec.image_size)
    return components


@torch.no_grad()
def give_random_field_a_surface(vae: TripoSGVAEModel, latents: torch.Tensor, inside_fraction: float = 0.05) -> None:
    """Shift a random decoder's output bias so about `inside_fraction` of the box decodes as inside.

    A random decoder's field is often all one sign; shifted like the MIDI-3D goldens', random
    models give (meaningless) surfaces, so tests and benchmarks exercise meshing for real.
    """
    from ..meshing import dense_grid_points

    points = torch.from_numpy(dense_grid_points((-1.0,) * 3, (1.0,) * 3, 16)).to(latents.device)
    values = vae.decode(latents, points[None].expand(latents.shape[0], -1, -1)).float()
    bias = vae.decoder.proj_out.bias
    bias += torch.quantile(values.flatten(), inside_fraction).to(bias.dtype)
