"""The pose head (models/pose_head.py): what it reads of the condition encoder's outputs, and old folders."""

from __future__ import annotations

import json

import torch

from scenewright.loading import load_component, save_component
from scenewright.models.pose_head import PoseHead, PoseHeadConfig


def _inputs(rows: int = 6, tokens: int = 9) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(rows, 1, 16, generator=generator), torch.randn(rows, tokens, 16, generator=generator)


def test_token_attention_reads_more_than_the_tokens_mean():
    emb1, emb2 = _inputs()
    # the same mean per row, the tokens otherwise spread differently
    shuffled = emb2 - emb2.mean(1, keepdim=True)
    shuffled = 3.0 * shuffled.flip(1) + emb2.mean(1, keepdim=True)
    assert torch.allclose(shuffled.mean(1), emb2.mean(1), atol=1e-5)
    for attention in (False, True):
        torch.manual_seed(0)
        head = PoseHead(PoseHeadConfig(16, 16, 8, width=32, token_attention=attention)).eval()
        with torch.no_grad():
            same = torch.allclose(head(emb1, emb2, 3), head(emb1, shuffled, 3), atol=1e-5)
        assert same == (not attention)


def test_a_head_saved_before_token_attention_loads_as_the_mean_head(tmp_path):
    emb1, emb2 = _inputs()
    torch.manual_seed(0)
    head = PoseHead(PoseHeadConfig(16, 16, 8, width=32)).eval()
    save_component(head, tmp_path / "pose_head")
    config_path = tmp_path / "pose_head" / "config.json"
    config = json.loads(config_path.read_text())
    del config["token_attention"]  # as the folders of 2026-12-05's fifth session and earlier
    config_path.write_text(json.dumps(config))
    loaded = load_component(tmp_path / "pose_head").eval()
    assert not loaded.config.token_attention
    with torch.no_grad():
        assert torch.equal(loaded(emb1, emb2, 2), head(emb1, emb2, 2))
