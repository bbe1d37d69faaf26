#!/usr/bin/env bash
# The project's test command: set up the environment with the test extras
# (torch for the CPU, the package, pytest, bpy) and run the default test suite.
# The tests build and install the extension into temporary Blender user folders themselves.
# Extra arguments go to pytest, e.g. `bash install/test.sh -m slow`.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SCENEWRIGHT_TORCH="${SCENEWRIGHT_TORCH:-cpu}" SCENEWRIGHT_EXTRAS="test,blender" SCENEWRIGHT_EXTENSION=0 bash "$repo/install/setup.sh"
cd "$repo"
echo "[scenewright tests] running pytest (default suite: slow tests excluded)"
exec "${SCENEWRIGHT_VENV:-$repo/.venv}/bin/python" -m pytest "$@"
