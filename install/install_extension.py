"""Build the extension zip and install it into Blender: a `blender` executable if one is found
(or given), else the bpy module of a Python environment (headless use). Standard library only.

    python install/install_extension.py [--blender PATH | --bpy] [--python PYTHON_WITH_BPY]

Installing again replaces the installed version (idempotent); into a bpy module, an extension built
from the same sources as the installed one is left as it is.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_extension import REPO_ROOT, build, sources_digest  # noqa: E402

REPO = "user_default"
STAMP = ".scenewright-sources"  # in the installed extension's folder: the sources_digest it was built from
BPY_INSTALL = (
    "import sys, bpy, pathlib\n"
    "result = bpy.ops.extensions.package_install_files(filepath=sys.argv[1], repo=sys.argv[2], enable_on_install=True)\n"
    "bpy.ops.wm.save_userpref()\n"
    "folder = pathlib.Path(bpy.utils.user_resource('EXTENSIONS', path=sys.argv[2])) / 'scenewright'\n"
    "(folder / sys.argv[3]).write_text(sys.argv[4])\n"
    "print('enabled' if 'bl_ext.' + sys.argv[2] + '.scenewright' in bpy.context.preferences.addons else 'NOT enabled')\n"
)
BPY_INSTALLED = (
    "import sys, bpy, pathlib\n"
    "bpy.ops.wm.read_userpref()\n"  # the bpy module starts without the saved preferences, where enabled add-ons are
    "folder = pathlib.Path(bpy.utils.user_resource('EXTENSIONS', path=sys.argv[1])) / 'scenewright'\n"
    "enabled = 'bl_ext.' + sys.argv[1] + '.scenewright' in bpy.context.preferences.addons\n"
    "stamp = folder / sys.argv[2]\n"
    "print(stamp.read_text() if enabled and stamp.is_file() else '')\n"
)


def say(message: str) -> None:
    print(f"[scenewright extension] {message}", flush=True)


def install_into_blender(blender: str, zip_path: Path) -> None:
    say(f"installing {zip_path.name} into {blender}")
    subprocess.run([blender, "--background", "--command", "extension", "install-file", "--repo", REPO, "--enable",
                    str(zip_path)], check=True)


def installed_in_bpy(python: str) -> str:
    """The sources digest of the extension installed and enabled in that bpy ('' when there is none)."""
    proc = subprocess.run([python, "-c", BPY_INSTALLED, REPO, STAMP], capture_output=True, text=True)
    return proc.stdout.strip().splitlines()[-1] if proc.returncode == 0 and proc.stdout.strip() else ""


def install_into_bpy(python: str, zip_path: Path, digest: str) -> None:
    say(f"installing {zip_path.name} into the bpy module of {python}")
    proc = subprocess.run([python, "-c", BPY_INSTALL, str(zip_path), REPO, STAMP, digest], capture_output=True, text=True)
    if proc.returncode != 0 or "NOT enabled" in proc.stdout:
        raise RuntimeError(f"installing into bpy failed:\n{proc.stdout}{proc.stderr}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blender", help="Blender executable (default: `blender` on PATH, if any)")
    parser.add_argument("--bpy", action="store_true", help="install into the bpy module even if a Blender is found")
    parser.add_argument("--python", default=sys.executable, help="a Python with the bpy module (used to build, and "
                        "installed into when no Blender executable is found)")
    args = parser.parse_args(argv)
    blender = None if args.bpy else args.blender or shutil.which("blender")
    try:
        digest = sources_digest()
        if not blender and installed_in_bpy(args.python) == digest:
            say("the installed extension is built from these sources: nothing to do")
            return 0
        zip_path = build(REPO_ROOT / "dist", args.python)
        say(f"built and validated {zip_path}")
        if blender:
            install_into_blender(blender, zip_path)
        else:
            if not args.bpy:
                say("no `blender` on PATH (give one with --blender); using the bpy module instead")
            install_into_bpy(args.python, zip_path, digest)
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        say(f"failed: {exc}")
        return 1
    say("done: the add-on 'scenewright' is installed and enabled (Blender: Edit > Preferences > Add-ons)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
