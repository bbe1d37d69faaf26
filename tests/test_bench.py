"""`scenewright bench` runs end to end on tiny settings and reports what docs/performance.md quotes."""

from __future__ import annotations

import json

import pytest

from scenewright.bench.run import main
from scenewright.bench.sampler import PRESETS, estimate_peak_bytes, parameter_counts


def test_extraction_benchmark_reports_counts_and_equal_meshes(tmp_path, capsys):
    out = tmp_path / "extraction.json"
    assert main(["extraction", "--resolution", "64", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["dense_queries"] == 3 * 65**3
    assert 0 < result["coarse_to_fine_queries"] < result["dense_queries"]
    assert result["identical_meshes"] is True
    assert "query ratio" in capsys.readouterr().out


@pytest.mark.parametrize("dtype, guidance", [("fp32", "cfg"), ("bf16", "cfg"), ("fp32", "timi")])
def test_sampler_benchmark_times_every_stage(tmp_path, capsys, dtype, guidance):
    """bf16 is CUDA's default; on the CPU it runs the same mixed-dtype path (fp32 latents into a bf16 decoder).
    TIMI takes gradients inside the sampler, which the benchmark must allow."""
    out = tmp_path / "sampler.json"
    argv = ["sampler", "--config", "small", "--steps", "2", "--instances", "1,2", "--resolution", "16", "--threads", "1",
            "--dtype", dtype, "--guidance", guidance, "--json", str(out)]
    assert main(argv) == 0
    result = json.loads(out.read_text())
    assert result["dtype"] == {"fp32": "float32", "bf16": "bfloat16"}[dtype]
    assert result["guidance"] == guidance
    assert [row["instances"] for row in result["rows"]] == [1, 2]
    for row in result["rows"]:
        assert row["encode_s"] > 0 and row["denoise_s"] > 0 and row["decode_s"] > 0
        assert row["peak_rss_bytes"] > 0
    assert "denoise s" in capsys.readouterr().out


def test_memory_estimate_counts_the_full_architecture():
    counts = parameter_counts(PRESETS["full"])
    assert 1.5e9 < counts["transformer"] < 2.0e9  # TripoSG DiT: width 2048, 21 blocks, two cross-attentions
    assert 2.9e8 < counts["image_encoder_1"] < 3.1e8 and 2.9e8 < counts["image_encoder_2"] < 3.2e8  # ViT-L/14
    five = estimate_peak_bytes(PRESETS["full"], 5)
    eight = estimate_peak_bytes(PRESETS["full"], 8)
    assert five["weights"] == 2 * sum(counts.values())
    assert eight["denoise_activations"] > five["denoise_activations"]


def test_reference_benchmark_without_the_reference_runs_our_side_and_says_why(golden_dir, tmp_path, capsys):
    """A --reference-dir that holds no reference code: the reference side is skipped with its import error,
    ours runs in its own process and reports every stage (one instance, one step, to stay short)."""
    import numpy as np
    from PIL import Image

    seg = np.asarray(Image.open(golden_dir / "e2e_scene_seg.png"))
    label = int(np.unique(seg[seg > 0])[0])
    one = tmp_path / "one-instance-seg.png"
    Image.fromarray(np.where(seg == label, seg, 0).astype(seg.dtype)).save(one)
    out = tmp_path / "reference.json"
    argv = ["reference", "--model", str(golden_dir / "tiny-midi-3d"), "--image", str(golden_dir / "e2e_scene_rgb.png"),
            "--seg", str(one), "--reference-dir", str(tmp_path), "--steps", "1", "--repeats", "1", "--threads", "1",
            "--json", str(out)]
    assert main(argv) == 0
    result = json.loads(out.read_text())
    assert result["instances"] == 1 and result["reference"] is None
    assert "midi" in result["reference_skipped"]  # the reference's package could not be imported from tmp_path
    ours = result["ours"]
    assert all(ours[stage] > 0 for stage in ("encode", "denoise", "field", "mesh", "total"))
    assert ours["other"] >= 0 and abs(sum(ours[s] for s in ("encode", "denoise", "field", "mesh", "other"))
                                      - ours["total"]) < 1e-6
    assert ours["queries"] > 0 and len(ours["vertices"]) == 1
    printed = capsys.readouterr().out
    assert "reference not run" in printed and "| mesh |" in printed


def test_reference_benchmark_up_to_decoding_times_encode_and_denoise_only(golden_dir, tmp_path):
    """`--stages denoise` stops our side where decoding starts: encode, denoise and the total up to there."""
    out = tmp_path / "denoise.json"
    argv = ["reference", "--model", str(golden_dir / "tiny-midi-3d"), "--image", str(golden_dir / "e2e_scene_rgb.png"),
            "--seg", str(golden_dir / "e2e_scene_seg.png"), "--steps", "2", "--repeats", "2", "--threads", "1",
            "--stages", "denoise", "--json", str(out)]
    assert main(argv) == 0
    result = json.loads(out.read_text())
    ours = result["ours"]
    assert result["stages"] == "denoise" and result["reference_skipped"] == "no --reference-dir given"
    assert set(ours) == {"encode", "denoise", "total", "runs"} and len(ours["runs"]) == 2
    assert all(run["encode"] > 0 and run["denoise"] > 0 and run["total"] >= run["encode"] + run["denoise"]
               for run in ours["runs"])


def test_layout_benchmark_scores_the_shipped_models_boxes_before_placement(shared_dir, tmp_path, capsys):
    """The generated boxes of two dev cases, two seeds: the shipped model's default sampling lays them out far
    better than a single Euler step does (which leaves the layout half-denoised)."""
    cases = tmp_path / "cases"
    cases.mkdir()
    for name in ("case_004", "case_005"):
        (cases / name).symlink_to(shared_dir / "benchmark" / "dev" / name)
    results = {}
    for steps in (None, 1):
        out = tmp_path / f"layout-{steps}.json"
        argv = ["layout", str(cases), "--seeds", "0,1", "--json", str(out)]
        argv += [] if steps is None else ["--steps", str(steps)]
        assert main(argv) == 0
        results[steps] = json.loads(out.read_text())
    default = results[None]
    assert default["steps"] == 12 and default["cases"] == 2 and default["instances"] == 4
    assert len(default["iou_b_per_seed"]) == 2 and all(len(v) == 2 for v in default["per_case"].values())
    assert min(default["iou_b_per_seed"]) > 0.2, default
    assert results[1]["iou_b_mean"] < default["iou_b_mean"] - 0.1, (results[1]["iou_b_mean"], default["iou_b_mean"])
    assert "IoU-B of the generated boxes" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="consecutive"):
        main(["layout", str(cases), "--seeds", "0,2"])
