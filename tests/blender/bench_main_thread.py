"""Benchmark: the longest main-thread tick of the add-on while a generation runs (not a test; run it by hand).

    .venv/bin/python tests/blender/bench_main_thread.py [--model default] [--example desk] [--json out.json]

Builds and installs the extension into a temporary Blender user folder, starts a real local backend
with the model, and in a bpy subprocess runs the panel's path (worker thread for the network, results
applied by the timer tick) while timing every tick: what the user feels as lag. The budget is 100 ms
(docs/blender.md); the import of the result happens inside one tick and is the longest.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from temp_blender import REPO_ROOT, install_extension

EXAMPLES = REPO_ROOT / "backend" / "scenewright" / "assets" / "examples"

BLENDER_SCRIPT = """
import json, sys, time
import bpy
import addon_utils
ext = addon_utils.enable("bl_ext.user_default.scenewright", default_set=True, handle_error=None)
ops, images = sys.modules[ext.__name__ + ".operators"], sys.modules[ext.__name__ + ".images"]
params = json.loads(sys.argv[1])
bpy.ops.wm.read_homefile(use_empty=True)
prefs = bpy.context.preferences.addons[ext.__name__].preferences
prefs.backend_mode, prefs.url, prefs.token = "REMOTE", params["url"], params["token"]
props = bpy.context.scene.scenewright
props.reference_image, props.seg_image = images.load_image(params["image"]), images.load_image(params["seg"])
ops.start_generation(bpy.context, prefs.backend_settings(), blocking=False)
ticks, deadline = [], time.monotonic() + 600
while ops._tasks and time.monotonic() < deadline:
    start = time.perf_counter()
    ops._pump()
    ticks.append(time.perf_counter() - start)
    time.sleep(0.05)
objects = len(bpy.data.collections[props.jobs[0].collection].objects) if props.jobs[0].collection else 0
print(json.dumps({"state": props.jobs[0].state, "ticks": len(ticks), "longest_tick_s": max(ticks),
                  "median_tick_s": sorted(ticks)[len(ticks) // 2], "objects": objects}))
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--example", default="desk")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        env = install_extension(root)
        service = subprocess.Popen([sys.executable, "-m", "scenewright", "serve", "--port", "0", "--data-dir",
                                    str(root / "data"), "--model", args.model, "--device", "cpu"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            state_file = root / "data" / "service.json"
            for _ in range(600):
                if state_file.exists():
                    break
                time.sleep(0.2)
            state = json.loads(state_file.read_text())
            example = EXAMPLES / args.example
            params = {"url": state["url"], "token": state["token"], "image": str(example / "image.png"),
                      "seg": str(example / "seg.png")}
            proc = subprocess.run([sys.executable, "-c", BLENDER_SCRIPT, json.dumps(params)], env=env, check=True,
                                  capture_output=True, text=True)
        finally:
            service.terminate()
            service.wait(30)
        result = json.loads(proc.stdout.strip().splitlines()[-1])
    result.update(model=args.model, example=args.example)
    print(f"{args.example} with model {args.model}: job {result['state']}, {result['objects']} objects; "
          f"{result['ticks']} ticks, longest {result['longest_tick_s'] * 1000:.1f} ms, "
          f"median {result['median_tick_s'] * 1000:.2f} ms (budget 100 ms)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
