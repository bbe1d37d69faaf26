"""`scenewright bench reference`: MIDI-3D's reference `MIDIPipeline` against `ScenePipeline`, stage by stage.

Both run on the same checkpoint (MIDI-3D's diffusers layout: the golden tiny replica, or any such
folder), the same image and instance map, seed, steps and guidance, float32 on the CPU, each in a
fresh process, the two sides alternated `--repeats` times. The reference code is run as it is, from
a checkout given by `--reference-dir` (VAST-AI-Research/MIDI-3D at b6ec9f6): its `scripts/inference_midi.py
run_midi` (the pipeline call with `decode_progressive=True`, the grid smoothing and marching cubes).
It needs diffusers 0.32.2 and transformers 4.49.0, which the project does not install; put them in a
folder of their own and pass it as `--reference-path`:

    pip install --target REFPKGS --no-deps diffusers==0.32.2 transformers==4.49.0 huggingface_hub==0.29.3 \\
        tokenizers==0.21.0 regex einops peft==0.14.0 accelerate==1.3.0 importlib_metadata zipp
    scenewright bench reference --reference-dir MIDI-3D --reference-path REFPKGS \\
        --model ../shared/golden/midi3d/tiny-midi-3d --image IMG --seg SEG

`--widen WIDTH LAYERS --widened-dir DIR` first writes a copy of `--model` whose transformer is a fresh
random one of that width and depth (head size 64, the same condition sizes, drawn as the golden
replica's weights were, seeded by `--seed`), made and saved by the
reference's own `TripoSGDiTModel` and `MIDIPipeline.save_pretrained` in the reference's process (so it
needs the reference), and runs both sides on it: the golden tiny transformer is too small to time the
denoiser by.

Two modules the reference imports but inference never calls are stood in for in its process:
`gradio` (imported by the script) and `torch_cluster` (farthest-point sampling of the VAE encoder).
Without `--reference-dir`, or when the reference cannot be imported, only our side runs and the
reason is printed (exit 0).

Stages: encode (both image encoders), denoise (the sampling loop), field (decoder queries; seconds,
query count and microseconds per query), mesh (the box filter and marching cubes: every call of them,
so ours includes the smoothing our coarse-to-fine repair does), other (the rest of the run: image
preprocessing, building the query grids, the boxes, our coarse-to-fine bookkeeping), total (all of
them; our placement stage is left out: the reference has none).

`--stages denoise` stops each side where it starts decoding (the same run up to there: the reference's
run_midi, our ScenePipeline.generate) and reports encode, denoise and total up to that point: a run of
the 512-wide transformer then takes under a minute instead of ten, so enough alternated repeats fit to
tell the two denoisers apart (their difference is smaller than the run-to-run spread of two repeats).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

STAGES = ("encode", "denoise", "field", "mesh", "other", "total")
STAGES_OF = {"all": STAGES, "denoise": ("encode", "denoise", "total")}  # what each --stages reports


class _DecodeReached(Exception):
    """Raised where decoding would start, when only the stages before it are timed (`--stages denoise`)."""


def _accumulating(seconds: dict[str, float], name: str, fn: Any) -> Any:
    """`fn`, its wall time added to seconds[name] at every call."""
    def wrapper(*a: Any, **k: Any) -> Any:
        start = time.perf_counter()
        out = fn(*a, **k)
        seconds[name] += time.perf_counter() - start
        return out
    return wrapper


def _stand_ins() -> None:
    """Modules the reference imports at load time but inference never calls."""
    import types

    sys.modules.setdefault("gradio", types.ModuleType("gradio"))
    stand_in = types.ModuleType("torch_cluster")

    def fps(*_: Any, **__: Any) -> Any:
        raise NotImplementedError("torch_cluster.fps: only the VAE encoder uses it")

    stand_in.fps = fps  # type: ignore[attr-defined]
    sys.modules.setdefault("torch_cluster", stand_in)


def _widen_side(args: argparse.Namespace) -> dict[str, Any]:
    """Run in the reference's process: `--model` with a fresh random transformer of the given size, saved by
    the reference's own classes to `--widened-dir`."""
    _stand_ins()
    import torch
    from midi.models.transformers import TripoSGDiTModel
    from midi.pipelines.pipeline_midi import MIDIPipeline

    pipe = MIDIPipeline.from_pretrained(args.model)
    old = pipe.transformer.config
    width, layers = args.widen
    transformer = TripoSGDiTModel(num_attention_heads=width // 64, width=width, in_channels=old.in_channels,
                                  num_layers=layers, cross_attention_dim=old.cross_attention_dim,
                                  cross_attention_2_dim=old.cross_attention_2_dim)
    # the golden replica's re-init (its generation_report.json), so that the latents, like the tiny
    # transformer's, decode to surfaces with the golden VAE: matrices ~ N(0, 1/fan_in), norm weights
    # ~ 1 + N(0, 0.2^2), other vectors ~ N(0, 0.1^2)
    generator = torch.Generator().manual_seed(args.seed)
    with torch.no_grad():
        for name, param in transformer.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if param.dim() >= 2:
                param.copy_(noise / param[0].numel() ** 0.5)
            elif "norm" in name and name.endswith("weight"):
                param.copy_(1 + 0.2 * noise)
            else:
                param.copy_(0.1 * noise)
    pipe.transformer = transformer
    inside = _give_the_field_a_surface(pipe, args)
    pipe.save_pretrained(args.widened_dir)
    return {"parameters": sum(p.numel() for p in pipe.transformer.parameters()), "inside_fraction_min": inside}


def _give_the_field_a_surface(pipe: Any, args: argparse.Namespace, fraction: float = 0.1) -> float:
    """Shift the VAE decoder's output bias so that each instance this run will generate (same image, seed,
    steps, guidance) decodes as inside on at least `fraction` of a 17^3 grid of the box: the latents of a
    random transformer otherwise decode to no surface, and run_midi stops at the first instance without
    one. Returns the smallest inside fraction after the shift."""
    import torch
    from scripts import inference_midi

    from ..meshing import DEFAULT_BBOX_MAX, DEFAULT_BBOX_MIN, dense_grid_points
    from ..models.dit import default_mi_blocks

    instance_rgbs, instance_masks, scene_rgbs = inference_midi.split_rgb_mask(str(args.image), str(args.seg))
    blocks = args.mi_blocks or default_mi_blocks(pipe.transformer.config.num_layers)  # the blocks the run will use
    pipe.init_custom_adapter(set_self_attn_module_names=[f"blocks.{b}" for b in blocks])
    latents = pipe(image=instance_rgbs, mask=instance_masks, image_scene=scene_rgbs,
                   attention_kwargs={"num_instances": len(instance_rgbs)}, num_inference_steps=args.steps,
                   guidance_scale=args.guidance_scale, generator=torch.Generator().manual_seed(args.seed),
                   output_type="latent", return_dict=False)[0]
    points = torch.from_numpy(dense_grid_points(DEFAULT_BBOX_MIN, DEFAULT_BBOX_MAX, 16))[None]
    with torch.no_grad():
        values = pipe.vae.decode(latents, sampled_points=points.expand(len(latents), -1, -1)).sample.float()
        values = values.reshape(len(latents), -1)
        shift = torch.quantile(values, fraction, dim=1).max()  # negative inside: the least-inside row gets `fraction`
        pipe.vae.decoder.proj_out.bias += shift  # the decoder negates its network's output
        values = pipe.vae.decode(latents, sampled_points=points.expand(len(latents), -1, -1)).sample.float()
        return float((values.reshape(len(latents), -1) <= 0).float().mean(dim=1).min())


def _reference_side(args: argparse.Namespace) -> dict[str, Any]:
    """Run in the reference's process: its run_midi, with timers around its stages."""
    _stand_ins()
    import torch
    from midi.pipelines.pipeline_midi import MIDIPipeline
    from scripts import inference_midi

    torch.set_num_threads(args.threads)
    pipe = MIDIPipeline.from_pretrained(args.model)
    pipe.init_custom_adapter(set_self_attn_module_names=[f"blocks.{b}" for b in args.mi_blocks])
    seconds = {"encode": 0.0, "field": 0.0, "mesh": 0.0}
    marks: dict[str, float] = {}
    queries = [0]

    def timed(name: str, fn: Any, count: Any = None) -> Any:
        def wrapper(*a: Any, **k: Any) -> Any:
            start = time.perf_counter()
            out = fn(*a, **k)
            seconds[name] += time.perf_counter() - start
            marks[name] = time.perf_counter()
            if count is not None:
                queries[0] += count(*a, **k)
            return out
        return wrapper

    pipe.encode_image_1 = timed("encode", pipe.encode_image_1)
    pipe.encode_image_2 = timed("encode", pipe.encode_image_2)
    decode_latents = pipe.decode_latents

    def decode_with_mark(*a: Any, **k: Any) -> Any:
        marks["decode_start"] = time.perf_counter()
        if args.stages == "denoise":
            raise _DecodeReached
        return decode_latents(*a, **k)

    pipe.decode_latents = decode_with_mark
    pipe.vae.decode = timed("field", pipe.vae.decode,
                            lambda latents, sampled_points=None, **_: int(sampled_points.shape[0] * sampled_points.shape[1])
                            if sampled_points.dim() == 3 else int(sampled_points.shape[0] * latents.shape[0]))
    inference_midi.smooth_gpu = timed("mesh", inference_midi.smooth_gpu)
    inference_midi.measure.marching_cubes = timed("mesh", inference_midi.measure.marching_cubes)
    start = time.perf_counter()
    try:
        scene = inference_midi.run_midi(pipe, str(args.image), str(args.seg), seed=args.seed,
                                        num_inference_steps=args.steps, guidance_scale=args.guidance_scale)
    except _DecodeReached:
        return {"encode": seconds["encode"], "denoise": marks["decode_start"] - marks["encode"],
                "total": marks["decode_start"] - start}
    total = time.perf_counter() - start
    vertices = [len(g.vertices) for g in scene.geometry.values()]
    stages = {"encode": seconds["encode"], "denoise": marks["decode_start"] - marks["encode"],
              "field": seconds["field"], "mesh": seconds["mesh"]}
    return {**stages, "other": total - sum(stages.values()), "total": total, "queries": queries[0],
            "vertices": vertices}


def _our_side(args: argparse.Namespace) -> dict[str, Any]:
    """Run in our own process: ScenePipeline.generate on the same inputs, the decoder's queries timed."""
    import torch
    from PIL import Image

    from .. import meshing
    from ..pipeline import ScenePipeline
    from ..protocol import GenerationSettings

    torch.set_num_threads(args.threads)
    pipe = ScenePipeline.from_pretrained(args.model, device="cpu", dtype="fp32")
    settings = GenerationSettings(seed=args.seed, steps=args.steps, guidance_scale=args.guidance_scale,
                                  mi_blocks=list(args.mi_blocks), mesh_resolution=256)
    if args.stages == "denoise":
        return _our_side_to_decoding(pipe, args, settings)
    field = {"seconds": 0.0, "queries": 0}
    query = pipe.decoder.query

    def timed_query(kv: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        out = query(kv, points)
        field["seconds"] += time.perf_counter() - start
        field["queries"] += int(points.shape[0] * points.shape[1])
        return out

    pipe.decoder.query = timed_query
    mesh = {"seconds": 0.0}
    meshing.box_smooth = _accumulating(mesh, "seconds", meshing.box_smooth)
    meshing.grid_to_mesh = _accumulating(mesh, "seconds", meshing.grid_to_mesh)
    result = pipe.generate(Image.open(args.image), Image.open(args.seg), settings)
    t = result.timings
    total = t["preprocess"] + t["encode"] + t["denoise"] + t["decode"]
    stages = {"encode": t["encode"], "denoise": t["denoise"], "field": field["seconds"], "mesh": mesh["seconds"]}
    # run_midi returns trimesh meshes, built with trimesh's default processing, which merges vertices at the
    # same position (marching cubes makes a few on convoluted fields): count ours the same way
    import trimesh

    merged = [len(trimesh.Trimesh(i.vertices, i.faces).vertices) for i in result.instances]
    return {**stages, "other": total - sum(stages.values()), "total": total, "queries": field["queries"],
            "vertices": merged, "vertices_unmerged": [len(i.vertices) for i in result.instances]}


def _our_side_to_decoding(pipe: Any, args: argparse.Namespace, settings: Any) -> dict[str, Any]:
    """ScenePipeline.generate up to where it starts decoding, its encode and denoise calls timed."""
    from PIL import Image

    seconds = {"encode": 0.0, "denoise": 0.0}

    def decode(*_: Any, **__: Any) -> Any:
        raise _DecodeReached

    pipe.encode_conditions = _accumulating(seconds, "encode", pipe.encode_conditions)
    pipe.denoise = _accumulating(seconds, "denoise", pipe.denoise)
    pipe.decode = decode
    start = time.perf_counter()
    try:
        pipe.generate(Image.open(args.image), Image.open(args.seg), settings)
    except _DecodeReached:
        return {**seconds, "total": time.perf_counter() - start}
    raise RuntimeError("ScenePipeline.generate returned without decoding")


def _run_side(side: str, args: argparse.Namespace) -> dict[str, Any] | str:
    """One fresh process for one side; its JSON, or why it gave none."""
    cmd = [sys.executable if side == "ours" else args.reference_python, "-m", "scenewright.bench.reference",
           "--side", side, "--model", str(args.model), "--image", str(args.image), "--seg", str(args.seg),
           *(["--widen", *map(str, args.widen), "--widened-dir", str(args.widened_dir)] if side == "widen" else []),
           "--steps", str(args.steps), "--guidance-scale", str(args.guidance_scale), "--seed", str(args.seed),
           "--threads", str(args.threads), "--stages", args.stages, *(["--mi-blocks", *map(str, args.mi_blocks)] if args.mi_blocks else [])]
    env = dict(os.environ)
    if side != "ours":
        ours = str(Path(__file__).resolve().parents[2])  # this package, for `-m scenewright.bench.reference`
        paths = [str(args.reference_dir), *args.reference_path, ours, env.get("PYTHONPATH", "")]
        env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env,
                          cwd=None if side == "ours" else str(args.reference_dir))
    if proc.returncode != 0:
        return (proc.stderr.strip().splitlines() or ["exit status %d" % proc.returncode])[-1]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else 0.5 * (ordered[mid - 1] + ordered[mid])


def format_reference(result: dict[str, Any]) -> str:
    widened = result.get("widened")
    lines = [f"transformer widened to {widened['width']} x {widened['layers']} layers "
             f"({widened['parameters'] / 1e6:.1f} M parameters, random)"] if widened else []
    lines += [f"{result['instances']} instances, {result['steps']} steps, guidance {result['guidance_scale']}, "
             f"{result['threads']} threads, medians of {result['repeats']} alternated runs"
             + (", up to decoding" if result.get("stages") == "denoise" else ""),
             "| stage | reference s | scenewright s | reference / scenewright |", "|---|---:|---:|---:|"]
    ref, ours = result.get("reference"), result["ours"]
    for stage in STAGES_OF[result.get("stages", "all")]:
        r = ref[stage] if ref else None
        lines.append(f"| {stage} | {'-' if r is None else f'{r:.2f}'} | {ours[stage]:.2f} | "
                     f"{'-' if r is None else f'{r / max(ours[stage], 1e-9):.2f}x'} |")
    for name, side in (("reference", ref), ("scenewright", ours)):
        if side and "queries" in side:
            lines.append(f"{name}: {side['queries']:,} decoder queries, {1e6 * side['field'] / max(side['queries'], 1):.2f} "
                         f"us per query, vertices per instance {side['vertices']}")
    if result.get("reference_skipped"):
        lines.append(f"reference not run: {result['reference_skipped']}")
    return "\n".join(lines)


def run_reference(args: argparse.Namespace) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {"reference": [], "ours": []}
    skipped = None if args.reference_dir else "no --reference-dir given"
    widened = None
    if args.widen:
        if skipped:
            raise SystemExit("scenewright bench reference: --widen needs the reference (--reference-dir)")
        out = _run_side("widen", args)
        if isinstance(out, str):
            raise SystemExit(f"scenewright bench reference: the reference could not write the widened model: {out}")
        widened = {"width": args.widen[0], "layers": args.widen[1], **out}
        args.model = args.widened_dir
    if args.mi_blocks is None:  # resolved here, so both sides get the same blocks
        args.mi_blocks = _default_blocks(args.model)
    for _ in range(args.repeats):
        for side in ("reference", "ours"):
            if side == "reference" and skipped:
                continue
            out = _run_side(side, args)
            if isinstance(out, str):
                if side == "ours":
                    raise SystemExit(f"scenewright bench reference: our side failed: {out}")
                skipped = out
                continue
            runs[side].append(out)

    def medians(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
        if not rows:
            return None
        keys = (*STAGES_OF[args.stages], *(("queries",) if "queries" in rows[0] else ()))
        out: dict[str, Any] = {k: _median([r[k] for r in rows]) for k in keys}
        if "vertices" in rows[0]:
            out["vertices"] = rows[0]["vertices"]
        out["runs"] = rows
        return out

    from PIL import Image
    import numpy as np

    seg = np.asarray(Image.open(args.seg))
    return {"model": str(args.model), "widened": widened,
            "instances": int(len(np.unique(seg[seg > 0]))), "steps": args.steps, "guidance_scale": args.guidance_scale,
            "threads": args.threads, "repeats": args.repeats, "stages": args.stages, "reference_skipped": skipped,
            "reference": medians(runs["reference"]), "ours": medians(runs["ours"])}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scenewright bench reference", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="a MIDI-3D model folder (diffusers layout)")
    parser.add_argument("--image", type=Path, required=True)
    parser.add_argument("--seg", type=Path, required=True)
    parser.add_argument("--reference-dir", type=Path, default=None, help="checkout of VAST-AI-Research/MIDI-3D")
    parser.add_argument("--reference-path", action="append", default=[],
                        help="folder with diffusers 0.32.2 / transformers 4.49.0 for the reference (repeatable)")
    parser.add_argument("--reference-python", default=sys.executable, help="interpreter for the reference")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--guidance-scale", type=float, default=7.0)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--mi-blocks", type=int, nargs="*", default=None,
                        help="multi-instance blocks (default: ScenePipeline's choice for the model)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--stages", choices=("all", "denoise"), default="all",
                        help="all: the whole run; denoise: each side stopped where decoding starts")
    parser.add_argument("--widen", type=int, nargs=2, metavar=("WIDTH", "LAYERS"), default=None,
                        help="time a fresh random transformer of this size instead (written by the reference)")
    parser.add_argument("--widened-dir", type=Path, default=Path("widened-midi-3d"),
                        help="where --widen writes its model folder")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--side", choices=("reference", "ours", "widen"), default=None, help=argparse.SUPPRESS)
    return parser


def _default_blocks(model: Path) -> list[int]:
    from ..models.dit import default_mi_blocks

    return default_mi_blocks(json.loads((model / "transformer" / "config.json").read_text())["num_layers"])



def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    for name in ("model", "image", "seg", "widened_dir"):  # the reference's process runs in --reference-dir
        setattr(args, name, getattr(args, name).resolve())
    if args.side == "widen":
        print(json.dumps(_widen_side(args)))
        return 0
    if args.side == "reference":
        print(json.dumps(_reference_side(args)))
        return 0
    if args.side == "ours":
        print(json.dumps(_our_side(args)))
        return 0
    result = run_reference(args)
    print(format_reference(result))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
