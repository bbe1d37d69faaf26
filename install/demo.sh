#!/usr/bin/env bash
# The main job on a fresh machine: set up the environment (torch, the package, Blender's bpy
# module), install the extension into that bpy, and generate a bundled example through the
# add-on with the default model: out/demo.blend, out/demo.png (a render through the solved
# camera) and out/demo-side-by-side.png. Extra arguments go to install/demo.py.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SCENEWRIGHT_EXTRAS="blender" SCENEWRIGHT_EXTENSION=0 bash "$repo/install/setup.sh"
py="${SCENEWRIGHT_VENV:-$repo/.venv}/bin/python"
"$py" "$repo/install/install_extension.py" --bpy
exec "$py" "$repo/install/demo.py" "$@"
