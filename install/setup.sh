#!/usr/bin/env bash
# Create (or update) the backend environment: a virtual environment with torch
# and the scenewright package. Idempotent: re-running only installs what is missing.
#
#   SCENEWRIGHT_VENV   where the environment lives            (default: <repo>/.venv)
#   SCENEWRIGHT_TORCH  cpu | cuda | skip  which torch build    (default: cuda when nvidia-smi works, else cpu)
#   SCENEWRIGHT_EXTRAS pip extras of the package to install    (default: none; tests use "test,blender")
#   SCENEWRIGHT_EXTENSION  1 | 0  build the Blender extension and install it into `blender` on PATH
#                      (or $SCENEWRIGHT_BLENDER), else into this environment's bpy module   (default: 1)
#   SCENEWRIGHT_TORCH_INDEX  a package index for torch, e.g. https://download.pytorch.org/whl/cpu
#                      for a CPU-only build on Linux (default: pip's configured indexes)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${SCENEWRIGHT_VENV:-$repo/.venv}"
extras="${SCENEWRIGHT_EXTRAS:-}"
torch_version="2.13.0"

say() { printf '[scenewright setup] %s\n' "$*"; }

python_bin="${PYTHON:-}"
if [ -z "$python_bin" ]; then
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1; then python_bin="$candidate"; break; fi
  done
fi
[ -n "$python_bin" ] || { say "no python3 found: install Python 3.11 (Blender 5.0's bpy module needs 3.11)"; exit 1; }

if [ ! -x "$venv/bin/python" ]; then
  say "creating the environment in $venv with $($python_bin --version)"
  "$python_bin" -m venv "$venv"
fi
py="$venv/bin/python"
pip=("$py" -m pip install --disable-pip-version-check -q)

flavour="${SCENEWRIGHT_TORCH:-}"
if [ -z "$flavour" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then flavour=cuda; else flavour=cpu; fi
fi
if "$py" -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('$torch_version') else 1)" 2>/dev/null; then
  say "torch $("$py" -c 'import torch; print(torch.__version__)') already installed"
elif [ "$flavour" = skip ]; then
  say "SCENEWRIGHT_TORCH=skip: not installing torch"
elif [ "$flavour" = cuda ]; then
  say "installing torch $torch_version with CUDA (an NVIDIA GPU was found; set SCENEWRIGHT_TORCH=cpu to override)"
  "${pip[@]}" "torch==$torch_version" ${SCENEWRIGHT_TORCH_INDEX:+--index-url "$SCENEWRIGHT_TORCH_INDEX"}
else
  say "installing torch $torch_version for the CPU (set SCENEWRIGHT_TORCH=cuda to override)"
  "${pip[@]}" "torch==$torch_version" ${SCENEWRIGHT_TORCH_INDEX:+--index-url "$SCENEWRIGHT_TORCH_INDEX"}
fi

target="$repo"
[ -n "$extras" ] && target="$repo[$extras]"
# An editable install follows code changes by itself: install again only when the dependencies may have changed.
stamp="$venv/.scenewright-install-${extras:-base}"
wanted="$("$py" -c "import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], 'rb').read() + sys.argv[2].encode()).hexdigest())" "$repo/pyproject.toml" "$repo")"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ] && "$py" -c "import scenewright" 2>/dev/null; then
  say "the scenewright package is installed and its dependencies are unchanged"
else
  say "installing the scenewright package${extras:+ with extras [$extras]}"
  "${pip[@]}" -e "$target"
  printf '%s\n' "$wanted" > "$stamp"
fi
say "environment ready: $venv (python: $py)"

if [ "${SCENEWRIGHT_EXTENSION:-1}" = 1 ]; then
  if [ -z "${SCENEWRIGHT_BLENDER:-}" ] && ! command -v blender >/dev/null 2>&1 \
     && ! "$py" -c "import importlib.util, sys; sys.exit(0 if importlib.util.find_spec('bpy') else 1)"; then
    say "no Blender found: installing the bpy module (Blender as a Python module) for headless use"
    "${pip[@]}" "bpy==5.0.1"
  fi
  "$py" "$repo/install/install_extension.py" ${SCENEWRIGHT_BLENDER:+--blender "$SCENEWRIGHT_BLENDER"}
fi
