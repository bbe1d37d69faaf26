"""A throwaway Blender set-up for the benchmark scripts beside this file: user folders in a temporary directory,
the extension built from this checkout and installed there (the tests do the same through conftest's fixtures)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def install_extension(root: Path) -> dict[str, str]:
    """Build the extension, install it into Blender user folders under `root`; the environment that points bpy there."""
    spec = importlib.util.spec_from_file_location("build_extension", REPO_ROOT / "install" / "build_extension.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    env = {**os.environ}
    for var in ("CONFIG", "SCRIPTS", "EXTENSIONS", "DATAFILES"):
        (root / var).mkdir()
        env[f"BLENDER_USER_{var}"] = str(root / var)
    zip_path = build.build(root / "dist")
    install = ("import bpy, sys; bpy.ops.extensions.package_install_files(filepath=sys.argv[1], repo='user_default', "
               "enable_on_install=True)")
    subprocess.run([sys.executable, "-c", install, str(zip_path)], env=env, check=True, capture_output=True)
    return env
