"""The built extension: its contents, the vendored wire format, and what the add-on may import."""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
ADDON_DIR = REPO_ROOT / "blender_addon"
BPY_FREE = ("client.py", "backend_process.py")  # testable outside Blender


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_zip_holds_the_sources_and_the_vendored_protocol(addon_zip):
    with zipfile.ZipFile(addon_zip) as archive:
        names = set(archive.namelist())
        vendored = archive.read("protocol.py")
    sources = {p.name for p in ADDON_DIR.glob("*.py")}
    assert names == sources | {"protocol.py", "blender_manifest.toml"}
    assert "protocol.py" not in sources  # one definition: copied at build time, never kept in the add-on
    assert vendored == (REPO_ROOT / "backend" / "scenewright" / "protocol.py").read_bytes()


def test_addon_never_imports_torch_or_the_backend_and_its_client_needs_no_bpy():
    for path in ADDON_DIR.glob("*.py"):
        imported = _imports(path)
        assert not imported & {"torch", "scenewright"}, path.name
        if path.name in BPY_FREE:
            assert not imported & {"bpy", "mathutils", "bpy_extras", "numpy"}, path.name


def test_disable_and_enable_again(blender):
    out = blender.run('''
addon_utils.disable(EXT.__name__, default_set=True, handle_error=None)
gone = not hasattr(bpy.types.Scene, "scenewright") and not hasattr(bpy.types, "SCENEWRIGHT_PT_main")
again = addon_utils.enable(EXT.__name__, default_set=True, handle_error=None) is not None
done({"gone": gone, "again": again, "props": hasattr(bpy.types.Scene, "scenewright")})
''').result
    assert out == {"gone": True, "again": True, "props": True}


def test_model_field_offers_the_shipped_models_by_name(blender):
    out = blender.run('''
import importlib
props = importlib.import_module(EXT.__name__ + ".properties")
search = props.model_candidates  # the Model field's search callback
scene = bpy.context.scene.scenewright
done({"all": [n for n, _ in search(scene, bpy.context, "")], "sca": [n for n, _ in search(scene, bpy.context, " SCA")],
      "folder": list(search(scene, bpy.context, "/models/mine"))})
''').result
    from scenewright.protocol import SHIPPED_MODELS

    assert out == {"all": list(SHIPPED_MODELS), "sca": ["default-sca"], "folder": []}


def test_installing_again_from_the_same_sources_does_nothing(fresh_blender):
    """install/install_extension.py --bpy (what the demo runs each time): the first run installs and enables
    the extension; a second one, sources unchanged, finds it installed and enabled and leaves it alone."""

    def install() -> str:
        proc = subprocess.run([sys.executable, str(REPO_ROOT / "install" / "install_extension.py"), "--bpy"],
                              env=fresh_blender.env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout

    first, second = install(), install()
    assert "installing scenewright-" in first and "installed and enabled" in first
    assert "nothing to do" in second and "installing" not in second
