"""Benchmark: how long the add-on's importer takes on a big result (not a test; run it by hand).

    .venv/bin/python tests/blender/bench_import.py [--instances 3] [--subdivisions 7]

Builds and installs the extension into a temporary Blender user folder, writes a
result with the backend's exporter (icospheres: subdivisions 7 = 327,680
triangles each) and times importer.import_result in a bpy subprocess.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import trimesh

from scenewright.export import export_result
from scenewright.pipeline import GeneratedInstance, GenerationResult
from scenewright.protocol import GenerationSettings
from temp_blender import install_extension

BLENDER_SCRIPT = """
import json, sys, time
import bpy
import addon_utils
ext = addon_utils.enable("bl_ext.user_default.scenewright", default_set=True, handle_error=None)
importer = sys.modules[ext.__name__ + ".importer"]
start = time.perf_counter()
meshes = importer.read_glb_meshes(sys.argv[1] + "/result.glb")
read_s = time.perf_counter() - start
times = []
for _ in range(3):
    start = time.perf_counter()
    importer.import_result(sys.argv[1], bpy.context.scene)
    times.append(time.perf_counter() - start)
print(json.dumps({"read_glb_s": read_s, "import_result_s": min(times)}))
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=3)
    parser.add_argument("--subdivisions", type=int, default=7)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        env = install_extension(root)
        sphere = trimesh.creation.icosphere(subdivisions=args.subdivisions)
        instances = [GeneratedInstance(i + 1, None, sphere.vertices.astype(np.float32), sphere.faces.astype(np.int32))
                     for i in range(args.instances)]
        export_result(GenerationResult(instances, GenerationSettings(), {"name": "view"}), root / "result", "bench")
        proc = subprocess.run([sys.executable, "-c", BLENDER_SCRIPT, str(root / "result")], env=env, check=True,
                              capture_output=True, text=True)
        timing = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"{args.instances} instances x {len(sphere.faces)} triangles ({len(sphere.vertices)} vertices): "
          f"read GLB {timing['read_glb_s']:.3f} s, import_result {timing['import_result_s']:.3f} s (best of 3)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
