"""The default model's training batches: conditions only where a group keeps them, and bf16 on the CPU.

Real scene shards (casemaker cases through the recipe's data stage) and the real condition encoder.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from scenewright.models.condition_encoder import BlockoutConditionEncoder
from scenewright.training import data as D
from scenewright.training.objectives import BatchRandom, SceneBatches
from scenewright.training.recipe import RecipeConfig, make_scene_data, recipe_preset

from casemaker import write_case

CASES = 4


@pytest.fixture(scope="module")
def scene_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, np.ndarray], RecipeConfig]:
    run = tmp_path_factory.mktemp("batches")
    for index in range(CASES):
        write_case(run / "cases" / f"case_{index:06d}", 2 + index % 2, first_seed=5 * index)
    (run / "cases" / "INDEX.json").write_text(json.dumps({"n_cases": CASES}))
    cfg = RecipeConfig(cases=CASES, workers=1, shard_size=CASES, grid_resolution=16, num_components=16)
    make_scene_data(run, cfg)
    return D.load_shards(run / "data", "scene"), cfg


def _batches(scene_data, cpu_bf16: bool = False) -> tuple[SceneBatches, list[tuple[int, slice]], list[int]]:
    data, cfg = scene_data
    torch.manual_seed(0)
    encoder = BlockoutConditionEncoder(recipe_preset(cfg).condition_encoder)
    rows = len(data["poses"])
    latents = torch.randn(rows, 3, 8)
    batches = SceneBatches(encoder, data, latents, latents.flip(0), mirror=0.0, cpu_bf16=cpu_bf16)
    starts = np.concatenate([[0], np.cumsum(data["num_instances"])])
    groups = [(s, slice(int(starts[s]), int(starts[s + 1]))) for s in range(CASES)]
    return batches, groups, [int(n) for n in data["num_instances"]]


def _encoded_rows(batches: SceneBatches, groups, conditioned) -> tuple[list[int], tuple[torch.Tensor, ...]]:
    """What the encoder was run on (its input rows per call) and the batch it gave."""
    calls: list[int] = []
    handle = batches.modules["condition_encoder"].register_forward_hook(
        lambda module, args, output: calls.append(len(args[1])))
    try:
        out = batches.batch(groups, conditioned, BatchRandom.seeded(0), torch.device("cpu"))
    finally:
        handle.remove()
    return calls, out


def test_groups_without_conditions_get_zeros_and_cost_no_encoder_pass(scene_data) -> None:
    batches, groups, sizes = _batches(scene_data)
    conditioned = [True, False, True, False]
    calls, (emb1, emb2, x0, _) = _encoded_rows(batches, groups, conditioned)
    assert calls == [sizes[0] + sizes[2]]  # one pass over the kept groups' rows only
    assert len(emb1) == len(emb2) == len(x0) == sum(sizes)
    starts = np.concatenate([[0], np.cumsum(sizes)])
    for k, keep in enumerate(conditioned):
        rows = slice(int(starts[k]), int(starts[k + 1]))
        assert bool(emb2[rows].detach().abs().sum() > 0) == keep and bool(emb1[rows].detach().abs().sum() > 0) == keep
    # a kept group's conditions are those it gets when encoded alone
    _, (alone1, alone2, _, _) = _encoded_rows(batches, groups[2:3], [True])
    rows = slice(int(starts[2]), int(starts[3]))
    torch.testing.assert_close(emb2[rows], alone2, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(emb1[rows], alone1, rtol=1e-4, atol=1e-5)


def test_a_batch_without_any_conditions_still_gives_the_encoder_a_zero_gradient(scene_data) -> None:
    batches, groups, sizes = _batches(scene_data)
    calls, (emb1, emb2, _, _) = _encoded_rows(batches, groups, [False] * CASES)
    assert calls == [sizes[0]]
    assert float(emb1.detach().abs().sum()) == 0.0 and float(emb2.detach().abs().sum()) == 0.0
    (emb1.sum() + emb2.sum()).backward()
    grads = [p.grad for p in batches.modules["condition_encoder"].parameters()]
    assert all(g is not None and float(g.abs().sum()) == 0.0 for g in grads)


@pytest.mark.skipif(not torch.ops.mkldnn._is_mkldnn_bf16_supported(), reason="this CPU has no native bf16")
def test_cpu_bf16_conditions_are_float32_and_near_the_float32_ones(scene_data) -> None:
    exact, groups, _ = _batches(scene_data)
    mixed, _, _ = _batches(scene_data, cpu_bf16=True)
    _, (emb1, emb2, _, _) = _encoded_rows(exact, groups, [True] * CASES)
    _, (bf1, bf2, _, _) = _encoded_rows(mixed, groups, [True] * CASES)
    assert bf1.dtype == bf2.dtype == torch.float32
    assert not torch.equal(bf2, emb2)  # it did run in bf16
    for low, high in ((bf1, emb1), (bf2, emb2)):
        assert float((low - high).detach().norm() / high.detach().norm()) < 0.05
    (bf1.sum() + bf2.sum()).backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()
               for p in mixed.modules["condition_encoder"].parameters())
