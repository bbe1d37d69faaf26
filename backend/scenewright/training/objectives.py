"""The two training objectives: VAE reconstruction and MIDI-style multi-instance rectified flow.

Each objective owns its trainable modules and draws its batches from explicit
generators (numpy for choices, torch for noise) whose states the trainer
checkpoints, so a resumed run repeats an uninterrupted one bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..image_processing import ImageProcessorConfig
from ..models.dit import PLAIN, AttentionLayout, TripoSGDiTModel
from ..models.pose_head import PoseHead
from ..models.vae import TripoSGVAEModel
from .data import conditions, scene_rows


@dataclass
class BatchRandom:
    """The generators a training step draws from (checkpointed with the model)."""

    numpy: np.random.Generator
    torch: torch.Generator

    @classmethod
    def seeded(cls, seed: int) -> "BatchRandom":
        return cls(np.random.default_rng(seed), torch.Generator("cpu").manual_seed(seed))

    def state(self) -> dict[str, Any]:
        return {"numpy": self.numpy.bit_generator.state, "torch": self.torch.get_state()}

    def load_state(self, state: dict[str, Any]) -> None:
        self.numpy.bit_generator.state = state["numpy"]
        self.torch.set_state(state["torch"].cpu())  # checkpoints may be loaded onto a GPU


# distance (in the normalised frame) at which the sign term's logit reaches 1
SIGN_SCALE = 0.01
# queries closer than this to the surface count for near_sign_accuracy
NEAR_SURFACE = 0.02


class VAEObjective:
    """Signed-distance regression (L1; the field is negative inside) + KL to N(0, I).

    With `truncation` > 0 the target distance is clamped to +-truncation, so far queries stop
    dominating the loss and the decoder spends its capacity near the surface. `sign_weight`
    adds a binary cross-entropy on inside/outside with logits -field / SIGN_SCALE: near the
    surface the L1 term hardly cares about the sign, and a wrong sign is a hole or a blob.
    `encoder_points` > 0 feeds the encoder a random subset of each surface (the DiT shards hold
    2048 points per instance, so the VAE learns on the point count it will encode).
    """

    def __init__(self, vae: TripoSGVAEModel, data: dict[str, np.ndarray], batch_size: int, num_tokens: int,
                 query_points: int, kl_weight: float, truncation: float = 0.0, sign_weight: float = 0.0,
                 encoder_points: int = 0):
        self.modules: dict[str, nn.Module] = {"vae": vae}
        self.data = data
        self.batch_size, self.num_tokens = batch_size, num_tokens
        self.query_points, self.kl_weight, self.truncation = query_points, kl_weight, truncation
        self.sign_weight, self.encoder_points = sign_weight, encoder_points

    def loss(self, rand: BatchRandom, device: torch.device) -> tuple[torch.Tensor, dict[str, float]]:
        vae = self.modules["vae"]
        rows = rand.numpy.choice(len(self.data["surface"]), self.batch_size, replace=False)
        total = self.data["points"].shape[1]
        picks = np.stack([rand.numpy.choice(total, self.query_points, replace=False) for _ in rows])
        points = torch.from_numpy(np.take_along_axis(self.data["points"][rows], picks[..., None], axis=1)).to(device)
        sdf = torch.from_numpy(np.take_along_axis(self.data["sdf"][rows], picks, axis=1).astype(np.float32)).to(device)
        surface = self.data["surface"][rows]
        if 0 < self.encoder_points < surface.shape[1]:
            keep = np.stack([rand.numpy.choice(surface.shape[1], self.encoder_points, replace=False) for _ in rows])
            surface = np.take_along_axis(surface, keep[..., None], axis=1)
        surface = torch.from_numpy(surface.astype(np.float32)).to(device)
        mean, logvar = vae.encode(surface, self.num_tokens, seed=int(rand.numpy.integers(2**31)))
        noise = torch.randn(mean.shape, generator=rand.torch).to(device)
        latents = mean + torch.exp(0.5 * logvar) * noise
        field = vae.decode(latents, points).float()
        target = sdf.clamp(-self.truncation, self.truncation) if self.truncation > 0 else sdf
        recon = (field - target).abs().mean()
        sign_loss = F.binary_cross_entropy_with_logits(-field / SIGN_SCALE, (sdf < 0).float())
        kl = 0.5 * (mean.float().pow(2) + logvar.float().exp() - 1.0 - logvar.float()).mean()
        agree = ((field < 0) == (sdf < 0)).float()
        near = sdf.abs() < NEAR_SURFACE
        stats = {"recon": recon.item(), "kl": kl.item(), "sign_bce": sign_loss.item(), "sign_accuracy": agree.mean().item(),
                 "near_sign_accuracy": agree[near].mean().item() if near.any() else float("nan")}
        return recon + self.sign_weight * sign_loss + self.kl_weight * kl, stats


@torch.no_grad()
def encode_means(vae: TripoSGVAEModel, surfaces: np.ndarray, num_tokens: int, device: torch.device,
                 batch_size: int = 32, seed: int = 0) -> torch.Tensor:
    """Posterior means (M, num_tokens, C) float32 on the CPU of surfaces (M, S, 6), deterministic for a seed."""
    out = []
    for start in range(0, len(surfaces), batch_size):
        chunk = torch.from_numpy(surfaces[start : start + batch_size].astype(np.float32)).to(device)
        mean, _ = vae.encode(chunk, num_tokens, seed=seed + start)
        out.append(mean.float().cpu())
    return torch.cat(out)


@torch.no_grad()
def standardize_latents(vae: TripoSGVAEModel, means: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold a per-channel shift and scale into `quant` and `post_quant` so that posterior means of the
    training shapes have zero mean and unit variance per channel, as the DiT's unit noise expects.

    The decoder's output for a given shape is unchanged (post_quant absorbs the inverse map);
    returns the (mu, std) that were folded in.
    """
    channels = vae.config.latent_channels
    flat = means.reshape(-1, channels).double()
    mu, std = flat.mean(0), flat.std(0).clamp_min(1e-6)
    quant_w, quant_b = vae.quant.weight.double(), vae.quant.bias.double()
    quant_w[:channels] /= std[:, None]
    quant_b[:channels] = (quant_b[:channels] - mu) / std
    quant_b[channels:] -= 2.0 * torch.log(std)
    post_w, post_b = vae.post_quant.weight.double(), vae.post_quant.bias.double()
    post_b = post_b + post_w @ mu
    post_w = post_w * std[None, :]
    for param, value in ((vae.quant.weight, quant_w), (vae.quant.bias, quant_b),
                         (vae.post_quant.weight, post_w), (vae.post_quant.bias, post_b)):
        param.copy_(value.to(param.dtype))
    return mu.float(), std.float()


class MidiBatches:
    """Conditions and targets of the MIDI-structured route: CLIP and 7-channel DINO crops of DiT shards,
    VAE latents; both image encoders train jointly."""

    def __init__(self, clip: nn.Module, dino: nn.Module, data: dict[str, np.ndarray], latents: torch.Tensor,
                 fe1: ImageProcessorConfig, fe2: ImageProcessorConfig):
        self.modules: dict[str, nn.Module] = {"image_encoder_1": clip, "image_encoder_2": dino}
        self.data, self.latents, self.fe1, self.fe2 = data, latents, fe1, fe2

    def batch(self, groups: list[tuple[int, slice]], conditioned: list[bool], rand: BatchRandom, device: torch.device,
              with_scene_row: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """(emb1, emb2, clean latents, weighted auxiliary losses: none here); the conditions of the groups
        not `conditioned` are zeros."""
        if with_scene_row:
            raise ValueError("the MIDI-structured route has no scene branch (scene-context training)")
        encoded, rows_of, weight = conditioned_rows([rows.stop - rows.start for _, rows in groups], conditioned)
        clip_px, dino_px = [], []
        for scene, rows in (groups[k] for k in encoded):
            clip, dino = conditions(self.data, scene, self.fe1, self.fe2)
            base = scene_rows(self.data, scene).start
            clip_px.append(clip[rows.start - base : rows.stop - base])
            dino_px.append(dino[rows.start - base : rows.stop - base])
        emb1 = self.modules["image_encoder_1"](torch.cat(clip_px).to(device)).unsqueeze(1)
        emb2 = self.modules["image_encoder_2"](torch.cat(dino_px).to(device))
        x0 = torch.cat([self.latents[rows] for _, rows in groups])
        return fill_rows(emb1, rows_of, weight, len(x0)), fill_rows(emb2, rows_of, weight, len(x0)), x0.to(device), {}


class SceneBatches:
    """Conditions and targets of the default model: the condition encoder's inputs from scene shards,
    shape-codec latents; with probability `mirror` a scene is seen mirrored left-right (its image
    inputs flipped, its latents those of the mirrored objects). With a scene branch (I-Scene's
    scene-context training) each scene can get one more row after its instances: the whole scene
    as one object (`data.scene_branch_example`), with its own latents. Two auxiliary losses teach the
    encoder: with a camera head, each scene's camera (pitch, field of view; mean squared error of the
    standardised values, times `camera_weight`); with a `pose_head`, each row's pose token (mean squared
    error, times `pose_head_weight`)."""

    def __init__(self, encoder: nn.Module, data: dict[str, np.ndarray], latents: torch.Tensor,
                 mirrored_latents: torch.Tensor, mirror: float, branch: dict[str, np.ndarray] | None = None,
                 branch_latents: tuple[torch.Tensor, torch.Tensor] | None = None, camera_weight: float = 0.0,
                 cpu_bf16: bool = False, pose_head: PoseHead | None = None, pose_head_weight: float = 0.0):
        self.modules: dict[str, nn.Module] = {"condition_encoder": encoder}
        if pose_head is not None:
            self.modules["pose_head"] = pose_head
        self.data, self.latents, self.mirrored, self.mirror = data, latents, mirrored_latents, mirror
        self.branch, self.branch_latents = branch, branch_latents
        self.camera_weight, self.pose_head_weight = camera_weight, pose_head_weight
        self.cpu_bf16 = cpu_bf16
        if encoder.camera_head is not None and "camera" not in data:
            raise ValueError("an encoder with a camera head needs each scene's camera in the shards: remake the "
                             "recipe's data stage")

    def batch(self, groups: list[tuple[int, slice]], conditioned: list[bool], rand: BatchRandom, device: torch.device,
              with_scene_row: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """(emb1, emb2, clean latents, weighted auxiliary losses by name); the conditions of the groups not
        `conditioned` are zeros, and the camera loss is taken over the conditioned scenes."""
        from ..models.condition_encoder import camera_targets, flip_conditions

        if with_scene_row and self.branch is None:
            raise ValueError("scene rows need the scene branch's data (the recipe's branch stage)")
        scenes, masks, crops, boxes, x0 = [], [], [], [], []
        for scene, rows in groups:
            picks = [self.data[name][rows] for name in ("masks", "crops", "boxes")]
            targets = [self.latents[rows], self.mirrored[rows]]
            if with_scene_row:
                picks = [np.concatenate([pick, self.branch[name][scene : scene + 1]])
                         for pick, name in zip(picks, ("masks", "crops", "boxes"))]
                targets = [torch.cat([t, b[scene : scene + 1]]) for t, b in zip(targets, self.branch_latents)]
            tensors = (torch.from_numpy(self.data["scene"][scene][None]), torch.from_numpy(picks[0][:, None]),
                       torch.from_numpy(picks[1]), torch.from_numpy(picks[2]))
            flip = rand.numpy.random() < self.mirror
            if flip:
                tensors = flip_conditions(*tensors)
            for out, tensor in zip((scenes, masks, crops, boxes), tensors):
                out.append(tensor)
            x0.append(targets[1] if flip else targets[0])
        x0 = torch.cat(x0)
        encoded, rows_of, weight = conditioned_rows([len(m) for m in masks], conditioned)
        index = torch.cat([torch.full((len(masks[k]),), j, dtype=torch.long) for j, k in enumerate(encoded)])
        scale = 1.0 / 255.0

        def inputs(parts: list[torch.Tensor]) -> torch.Tensor:
            return torch.cat([parts[k] for k in encoded]).to(device)

        # bf16 on the CPU: oneDNN's bf16 convolutions are faster there; the transformer's kernels are not
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.cpu_bf16 and device.type == "cpu"):
            emb1, emb2, camera = self.modules["condition_encoder"](
                inputs(scenes).float() * scale, inputs(masks).float() * scale, inputs(crops).float() * scale,
                inputs(boxes), index.to(device))
        extra = {}
        if camera is not None:
            truth = torch.from_numpy(self.data["camera"][[groups[k][0] for k in encoded]])
            target = camera_targets(truth[:, 0], truth[:, 1]).to(device)
            scene_weight = torch.tensor([float(conditioned[k]) for k in encoded], device=device)
            error = (camera.float() - target).pow(2).mean(dim=1)
            extra["camera"] = self.camera_weight * (error * scene_weight).sum() / scene_weight.sum().clamp_min(1.0)
        if "pose_head" in self.modules:  # the groups of a batch have one size
            pose = self.modules["pose_head"](emb1.float(), emb2.float(), len(masks[encoded[0]]))
            error = (pose - x0[rows_of, 0].to(device)).pow(2).mean(dim=1)
            row_weight = weight.to(device)
            extra["pose_head"] = self.pose_head_weight * (error * row_weight).sum() / row_weight.sum().clamp_min(1.0)
        emb1, emb2 = (fill_rows(e.float(), rows_of, weight, len(x0)) for e in (emb1, emb2))
        return emb1, emb2, x0.to(device), extra


def conditioned_rows(sizes: list[int], conditioned: list[bool]) -> tuple[list[int], torch.Tensor, torch.Tensor]:
    """The groups (of `sizes` rows) whose conditions are computed, the batch rows they fill and each row's weight.

    Groups trained without conditions (classifier-free guidance) get zeros and cost no encoder pass. When every
    group is dropped the first is encoded with weight 0, so the encoders still get a (zero) gradient.
    """
    encoded = [k for k, keep in enumerate(conditioned) if keep] or [0]
    starts = np.concatenate([[0], np.cumsum(sizes)])
    rows = torch.cat([torch.arange(int(starts[k]), int(starts[k + 1])) for k in encoded])
    weight = torch.cat([torch.full((sizes[k],), float(conditioned[k])) for k in encoded])
    return encoded, rows, weight


def fill_rows(embedding: torch.Tensor, rows: torch.Tensor, weight: torch.Tensor, total: int) -> torch.Tensor:
    """(len(rows), ...) embeddings of the encoded rows -> (total, ...), weighted, zeros in every other row."""
    scaled = embedding * weight.to(embedding.device, embedding.dtype).view(-1, *[1] * (embedding.dim() - 1))
    return embedding.new_zeros((total, *embedding.shape[1:])).index_copy(0, rows.to(embedding.device), scaled)


class DiTObjective:
    """MIDI's recipe: one timestep per scene, independent noise per instance, v = x0 - noise,
    conditions dropped (zeros) per scene for classifier-free guidance, and a share of
    single-object batches with multi-instance attention off. `batches` gives the conditions
    (its encoders train jointly) and the clean latents of the chosen rows."""

    def __init__(self, transformer: TripoSGDiTModel, batches: MidiBatches | SceneBatches,
                 num_instances: np.ndarray, batch_size: int, layout: AttentionLayout, cfg_drop: float,
                 single_fraction: float, logit_mean: float, logit_std: float,
                 token_weights: torch.Tensor | None = None):
        self.modules: dict[str, nn.Module] = {"transformer": transformer, **batches.modules}
        # per latent token loss weights (normalised to mean 1), e.g. to favour the pose token; None: all equal
        self.token_weights = None if token_weights is None else token_weights / token_weights.mean()
        self.batches = batches
        self.batch_size, self.layout = batch_size, layout
        self.cfg_drop, self.single_fraction = cfg_drop, single_fraction
        self.logit_mean, self.logit_std = logit_mean, logit_std
        counts = np.asarray(num_instances)
        self.buckets = {int(n): np.flatnonzero(counts == n) for n in np.unique(counts)}
        self.starts = np.concatenate([[0], np.cumsum(counts)])

    def _pick(self, rand: BatchRandom) -> tuple[list[tuple[int, slice]], int]:
        """(scene, rows) pairs of one batch and its group size: a bucket of scenes of equal N, or single objects."""
        if rand.numpy.random() < self.single_fraction:
            rows = rand.numpy.choice(int(self.starts[-1]), self.batch_size, replace=False)
            scene_of = np.searchsorted(self.starts, rows, side="right") - 1
            return [(int(s), slice(int(r), int(r) + 1)) for s, r in zip(scene_of, rows)], 1
        sizes = np.array(sorted(self.buckets))
        weights = np.array([len(self.buckets[n]) for n in sizes], dtype=np.float64)
        n = int(rand.numpy.choice(sizes, p=weights / weights.sum()))
        count = min(max(1, self.batch_size // n), len(self.buckets[n]))
        scenes = rand.numpy.choice(self.buckets[n], count, replace=False)
        return [(int(s), slice(int(self.starts[s]), int(self.starts[s + 1]))) for s in scenes], n

    def loss(self, rand: BatchRandom, device: torch.device) -> tuple[torch.Tensor, dict[str, float]]:
        groups, num_instances = self._pick(rand)
        with_scene_row = self.layout.mode == "scene_context" and num_instances > 1  # I-Scene: a scene row per group
        per_group = num_instances + int(with_scene_row)
        conditioned = [bool(rand.numpy.random() >= self.cfg_drop) for _ in groups]
        emb1, emb2, x0, extra = self.batches.batch(groups, conditioned, rand, device, with_scene_row)
        # one sigma per group (logit-normal), repeated over its rows
        sigma = torch.sigmoid(self.logit_mean + self.logit_std * torch.randn(len(groups), generator=rand.torch))
        sigma = sigma.repeat_interleave(per_group) if per_group > 1 else sigma
        noise = torch.randn(x0.shape, generator=rand.torch).to(device)
        sigma = sigma.to(device)
        noisy = (1.0 - sigma[:, None, None]) * x0 + sigma[:, None, None] * noise
        layout = self.layout if num_instances > 1 else PLAIN
        velocity = self.modules["transformer"](noisy, sigma * 1000.0, emb1, emb2, num_instances=num_instances,
                                               layout=layout)
        error = (velocity.float() - (x0 - noise)).pow(2)
        stats = {"instances": float(num_instances), "rows": float(len(x0))}
        if self.token_weights is not None:
            per_token = error.mean(dim=(0, 2)).detach()
            stats.update({"loss_token0": float(per_token[0]), "loss_rest": float(per_token[1:].mean())})
            error = error * self.token_weights.to(error.device)[None, :, None]
        stats.update({f"loss_{name}": float(value.detach()) for name, value in extra.items()})
        return error.mean() + sum(extra.values(), torch.zeros((), device=error.device)), stats
