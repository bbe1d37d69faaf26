"""Guiders and TIMI (../shared/papers/TIMI.txt): the plain sampler unchanged, the separation loss lowered,
gradients finite, the smoothing of both decoders, and clear errors for bad parameters."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from scenewright.guidance import ClassifierFreeGuidance, StepContext, TimiGuidance, separation_loss
from scenewright.masks import instances_from_seg
from scenewright.models.attention import AttentionProbsProcessor, FusedAttentionProcessor
from scenewright.models.shape_codec import gaussian_blur_3d
from scenewright.pipeline import ScenePipeline
from scenewright.protocol import GenerationSettings, SettingsError, TimiSettings

EXAMPLE = Path(__file__).resolve().parents[1] / "backend" / "scenewright" / "assets" / "examples" / "desk"


@pytest.fixture(scope="module")
def codec_pipe(tiny_codec_model: Path) -> ScenePipeline:
    return ScenePipeline.from_pretrained(tiny_codec_model, device="cpu")


@pytest.fixture(scope="module")
def midi_pipe(golden_dir: Path) -> ScenePipeline:
    return ScenePipeline.from_pretrained(golden_dir / "tiny-midi-3d", device="cpu", dtype="fp32")


def _inputs(pipe: ScenePipeline) -> tuple[Image.Image, list[np.ndarray], torch.Tensor, torch.Tensor]:
    image = Image.open(EXAMPLE / "image.png").convert("RGB")
    masks = [m.mask for m in instances_from_seg(Image.open(EXAMPLE / "seg.png"))]
    emb1, emb2 = pipe.encode_conditions(image, masks)
    return image, masks, emb1, emb2


def test_cfg_guider_is_the_plain_sampler_bit_for_bit(codec_pipe):
    """With only classifier-free guidance, denoise is exactly the textbook loop."""
    _, masks, emb1, emb2 = _inputs(codec_pipe)
    layout = codec_pipe.transformer.layout([1, 2, 3])
    start = codec_pipe.prepare_latents(len(masks), seed=3)
    guided = codec_pipe.denoise(start, emb1, emb2, 5, [ClassifierFreeGuidance(3.0)], layout)
    latents, scheduler = start.clone(), codec_pipe.scheduler
    scheduler.set_timesteps(5)
    with torch.no_grad():
        for t in scheduler.timesteps:
            rows = torch.cat([latents, latents])
            emb = (torch.cat([torch.zeros_like(emb1), emb1]), torch.cat([torch.zeros_like(emb2), emb2]))
            uncond, cond = codec_pipe.transformer(rows, t.expand(len(rows)), *emb, num_instances=len(masks),
                                                  layout=layout).float().chunk(2)
            latents = scheduler.step(uncond + 3.0 * (cond - uncond), t, latents)
    assert torch.equal(guided, latents)
    # and generate with guidance "cfg" is the default
    image, seg = Image.open(EXAMPLE / "image.png"), Image.open(EXAMPLE / "seg.png")
    a = codec_pipe.generate(image, seg, GenerationSettings(steps=3, guidance="cfg"))
    b = codec_pipe.generate(image, seg, GenerationSettings(steps=3))
    assert all(np.array_equal(x.vertices, y.vertices) for x, y in zip(a.instances, b.instances))


def test_step_callback_may_change_the_latents(codec_pipe):
    _, masks, emb1, emb2 = _inputs(codec_pipe)
    seen = []

    def callback(step, timestep, latents):
        seen.append((step, float(timestep)))
        return torch.zeros_like(latents) if step == 2 else None

    out = codec_pipe.denoise(codec_pipe.prepare_latents(len(masks), 0), emb1, emb2, 3, [ClassifierFreeGuidance(1.0)],
                             callback_on_step_end=callback)
    assert [s for s, _ in seen] == [0, 1, 2] and torch.equal(out, torch.zeros_like(out))


def _losses(pipe: ScenePipeline, masks, emb1, emb2, settings: TimiSettings, steps: int = 16) -> list[float]:
    index, weights = pipe.conditioner.patch_masks(masks)
    timi = TimiGuidance(settings, index, weights, pipe.decoder)
    pipe.denoise(pipe.prepare_latents(len(masks), seed=0), emb1, emb2, steps, [ClassifierFreeGuidance(3.0), timi],
                 pipe.transformer.layout([]))
    return timi.losses


@pytest.mark.parametrize("model", ["codec", "midi"])
def test_timi_lowers_the_separation_loss_at_the_guided_steps(model, request):
    pipe = request.getfixturevalue(f"{model}_pipe")
    _, masks, emb1, emb2 = _inputs(pipe)
    index, weights = pipe.conditioner.patch_masks(masks)
    assert weights.shape == (len(masks), len(index)) and (weights >= 0).all() and (weights <= 1).all()
    assert torch.allclose(weights.sum(dim=1) > 0, torch.ones(len(masks), dtype=torch.bool))
    # an unguided run measures the same loss with updates too small to matter
    unguided = _losses(pipe, masks, emb1, emb2, TimiSettings(alpha=1e-4))
    guided = _losses(pipe, masks, emb1, emb2, TimiSettings(alpha=0.5))
    assert len(guided) == len(unguided) == 15  # the first 15 steps are guided
    assert all(math.isfinite(v) for v in guided + unguided)
    assert guided[0] == pytest.approx(unguided[0], rel=1e-6)  # the same start
    assert np.mean(guided[1:]) < np.mean(unguided[1:])
    without_sgu = _losses(pipe, masks, emb1, emb2, TimiSettings(alpha=0.5, sgu=False))
    assert np.mean(without_sgu[1:]) < np.mean(unguided[1:])


def test_timi_runs_only_the_blocks_it_reads_and_gets_the_whole_models_gradient(codec_pipe):
    """The separation loss reads blocks 0..layers, so the gradient pass stops there, and those blocks may be
    checkpointed (run again in the backward pass instead of keeping their activations; by default on CUDA): on
    MIDI-3D's size the memory of TIMI's pass (docs/performance.md). The gradient is the one through the whole
    model."""
    _, masks, emb1, emb2 = _inputs(codec_pipe)
    transformer = codec_pipe.transformer
    index, weights = codec_pipe.conditioner.patch_masks(masks)
    timi = TimiGuidance(TimiSettings(layers=1), index, weights, codec_pipe.decoder, checkpoint_blocks=True)
    blocks = timi.guided_blocks(transformer)
    assert blocks and max(blocks) < len(transformer.blocks) - 1
    layout = transformer.layout([1, 2])
    ctx = StepContext(transformer, torch.tensor(700.0), 0, emb1, emb2, layout, torch.float32, len(masks))
    latents = codec_pipe.prepare_latents(len(masks), seed=0)
    runs = {0: 0, len(transformer.blocks) - 1: 0}
    hooks = [transformer.blocks[b].register_forward_pre_hook(lambda *args, b=b: runs.__setitem__(b, runs[b] + 1))
             for b in runs]
    try:
        gradient, loss = timi._gradient(ctx, latents, blocks)
    finally:
        for hook in hooks:
            hook.remove()
    assert runs == {0: 2, len(transformer.blocks) - 1: 0}  # the first block ran again in the backward pass, the last never
    assert transformer.gradient_checkpointing is False

    recorders = {b: AttentionProbsProcessor() for b in blocks}
    for b, recorder in recorders.items():
        transformer.blocks[b].attn2_2.processor = recorder
    try:
        z = latents.clone().requires_grad_(True)
        ctx.predict(z, emb1, emb2)  # every block
        whole = separation_loss([recorders[b].probs[0] for b in blocks], index, weights.float())
        (expected,) = torch.autograd.grad(whole, z)
    finally:
        for b in blocks:
            transformer.blocks[b].attn2_2.processor = FusedAttentionProcessor()
    assert loss == pytest.approx(float(whole.detach()), rel=1e-6)
    assert torch.allclose(gradient, expected, rtol=1e-5, atol=1e-8) and gradient.abs().max() > 0

    default = TimiGuidance(TimiSettings(layers=1), index, weights, codec_pipe.decoder)  # checkpoints on CUDA only
    hook = transformer.blocks[0].register_forward_pre_hook(lambda *args: runs.__setitem__(0, runs[0] + 1))
    try:
        plain, _ = default._gradient(ctx, latents, blocks)
    finally:
        hook.remove()
    assert runs[0] == 3 and torch.allclose(plain, expected, rtol=1e-5, atol=1e-8)  # once more, on this CPU


def test_timi_runs_through_generate_with_and_without_multi_instance_attention(codec_pipe):
    image, seg = Image.open(EXAMPLE / "image.png"), Image.open(EXAMPLE / "seg.png")
    for blocks in ([], None):
        result = codec_pipe.generate(image, seg, GenerationSettings(steps=4, guidance="timi", mi_blocks=blocks))
        assert not all(i.empty for i in result.instances)


def test_separation_loss_prefers_attention_on_one_instance():
    masks = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]])
    index = torch.arange(4)
    focused = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.5, 0.5]])  # token 0 on instance 1, token 1 on 2
    spread = torch.full((2, 4), 0.25)
    with_time = lambda a: torch.cat([torch.full((1, 4), 0.25), a])[None, None]  # (rows, heads, 1 + tokens, keys)
    assert separation_loss([with_time(focused)], index, masks) < separation_loss([with_time(spread)], index, masks)
    assert separation_loss([with_time(focused)], index, masks) == pytest.approx(0.0, abs=1e-4)


def test_codec_smoothing_is_a_gaussian_on_the_grid(codec_pipe):
    codec = codec_pipe.decoder
    gradient = torch.randn(3, codec.config.tokens, codec.config.channels)
    smoothed = codec.smooth_gradient(gradient, gradient, 1.5)
    assert smoothed.shape == gradient.shape and torch.isfinite(smoothed).all()
    assert torch.equal(smoothed.reshape(3, -1)[:, :8], gradient.reshape(3, -1)[:, :8])  # the pose passes
    assert torch.equal(codec.smooth_gradient(gradient, gradient, 0.0), gradient)
    volume = torch.zeros(1, 1, 15, 15, 15)
    volume[0, 0, 7, 7, 7] = 1.0
    blurred = gaussian_blur_3d(volume, 1.5)
    assert blurred.sum() == pytest.approx(1.0, abs=1e-5) and blurred.argmax() == volume.argmax()
    profile = blurred[0, 0, 7, 7]
    assert profile[8] / profile[7] == pytest.approx(math.exp(-0.5 / 1.5**2), rel=0.02)


def test_vecset_smoothing_averages_latent_neighbours(midi_pipe):
    """Tokens on a line in latent space: an impulse of gradient spreads to the nearest few tokens only."""
    latents = torch.zeros(1, 17, 8)
    latents[0, :, 0] = torch.arange(17.0) * 3.0 + torch.linspace(0.0, 0.1, 17) ** 2  # no ties of distance
    gradient = torch.zeros(1, 17, 8)
    gradient[0, 8] = 1.0
    smoothed = midi_pipe.decoder.smooth_gradient(gradient, latents, 1.5)[0, :, 0]
    assert smoothed.argmax() == 8 and smoothed[8] < 1.0
    assert (smoothed[[6, 7, 9, 10]] > 0).all() and (smoothed[:5] == 0).all() and (smoothed[12:] == 0).all()
    assert smoothed.sum() == pytest.approx(1.0, abs=0.35)  # moved around, about conserved
    assert torch.equal(midi_pipe.decoder.smooth_gradient(gradient, latents, 0.0), gradient)


@pytest.mark.parametrize("settings, words", [
    ({"guidance": "timi", "timi": {"alpha": 0}}, "timi.alpha must be a finite number between"),
    ({"guidance": "timi", "timi": {"steps": 0}}, "timi.steps must be between 1 and 200"),
    ({"guidance": "timi", "timi": {"momentum": 1.0}}, "timi.momentum must be a finite number between"),
    ({"guidance": "timi", "timi": {"sgu": "yes"}}, "timi.sgu must be true or false"),
    ({"guidance": "timi", "timi": {"beta": 0.9}}, "unknown timi setting(s) ['beta']"),
    ({"guidance": "isg"}, "guidance must be one of ['cfg', 'timi']"),
])
def test_bad_timi_settings_say_what_is_wrong(settings, words):
    with pytest.raises(SettingsError) as info:
        GenerationSettings.from_dict(settings)
    assert words in str(info.value)


def test_bad_timi_parameter_on_the_command_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "scenewright", "generate", "--image", str(EXAMPLE / "image.png"),
                             "--seg", str(EXAMPLE / "seg.png"), "--out", str(tmp_path), "--guidance", "timi",
                             "--timi-alpha", "-1"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "timi.alpha must be a finite number between" in result.stderr
    assert "Traceback" not in result.stderr
    result = subprocess.run([sys.executable, "-m", "scenewright", "predict", "--cases", str(tmp_path), "--out",
                             str(tmp_path / "p"), "--guidance", "timi", "--timi-steps", "0"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "timi.steps must be between 1 and 200" in result.stderr
