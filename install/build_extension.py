"""Build the Blender extension zip with Blender's own extension tool.

The add-on never imports the backend package, so the wire format
(backend/scenewright/protocol.py) is vendored here: copied verbatim into the
staged package at build time, never edited by hand. Standard library only.

    python install/build_extension.py [--out-dir dist] [--python PYTHON_WITH_BPY]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
MANIFEST = REPO_ROOT / "blender_manifest.toml"
ADDON_DIR = REPO_ROOT / "blender_addon"
PROTOCOL = REPO_ROOT / "backend" / "scenewright" / "protocol.py"
EXT_TOOL_GLOB = "*/scripts/addons_core/bl_pkg/cli/blender_ext.py"


def manifest_version() -> str:
    match = re.search(r'^version\s*=\s*"([^"]+)"', MANIFEST.read_text(encoding="utf-8"), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no version in {MANIFEST}")
    return match.group(1)


def sources_digest() -> str:
    """sha256 of everything the extension is built from: unchanged sources need no new build or install."""
    import hashlib

    digest = hashlib.sha256()
    for path in [MANIFEST, PROTOCOL, *sorted(ADDON_DIR.glob("*.py"))]:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def stage(dest: Path) -> Path:
    """Copy manifest + add-on sources + the vendored protocol.py into `dest` (the package root)."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(MANIFEST, dest / MANIFEST.name)
    for src in sorted(ADDON_DIR.glob("*.py")):
        shutil.copy2(src, dest / src.name)
    if (dest / PROTOCOL.name).exists():
        raise RuntimeError(f"blender_addon/ must not hold its own {PROTOCOL.name}; it is vendored from {PROTOCOL}")
    shutil.copy2(PROTOCOL, dest / PROTOCOL.name)
    return dest


def find_ext_tool(python: str) -> Path:
    """Locate blender_ext.py inside the bpy package that `python` imports (no bpy import: just its location)."""
    code = "import importlib.util as u; s = u.find_spec('bpy'); print(s.origin if s else '')"
    origin = subprocess.run([python, "-c", code], check=True, capture_output=True, text=True).stdout.strip()
    if not origin:
        raise RuntimeError(f"{python} has no bpy module; install it with `pip install bpy==5.0.1` or pass --python")
    tools = sorted(Path(origin).parent.glob(EXT_TOOL_GLOB))
    if not tools:
        raise RuntimeError(f"Blender's extension tool ({EXT_TOOL_GLOB}) not found next to {origin}")
    return tools[-1]


def build(out_dir: Path, python: str = sys.executable) -> Path:
    """Stage, build and validate; returns the path of dist/scenewright-<version>.zip."""
    tool = find_ext_tool(python)
    out_dir.mkdir(parents=True, exist_ok=True)
    zip_path = out_dir.resolve() / f"scenewright-{manifest_version()}.zip"
    with tempfile.TemporaryDirectory(prefix="scenewright-ext-") as tmp:
        src = stage(Path(tmp) / "scenewright")
        _run_tool(python, tool, "build", "--source-dir", str(src), "--output-filepath", str(zip_path))
    _run_tool(python, tool, "validate", str(zip_path))
    return zip_path


def _run_tool(python: str, tool: Path, *args: str) -> None:
    proc = subprocess.run([python, str(tool), *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"blender_ext {args[0]} failed:\n{proc.stdout}{proc.stderr}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=REPO_ROOT / "dist")
    parser.add_argument("--python", default=sys.executable, help="a Python that can import bpy (its blender_ext.py is used)")
    args = parser.parse_args(argv)
    try:
        path = build(args.out_dir, args.python)
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        print(f"build_extension: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
