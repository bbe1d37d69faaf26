"""Real Blender (the bpy module) in subprocesses, the built extension, and a real backend process.

Every Blender session runs in its own process with the user folders pointed at
a temporary place, so nothing touches the machine's Blender configuration.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
ADDON_MODULE = "bl_ext.user_default.scenewright"
ADDON_PACKAGE = "scenewright_addon"  # the staged add-on imported as a plain package (bpy-free modules only)

# Without the bpy module (pip install bpy==5.0.1) there is no Blender to test in.
collect_ignore_glob = ["test_*.py"] if importlib.util.find_spec("bpy") is None else []


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.blender)


def _build_module():
    spec = importlib.util.spec_from_file_location("build_extension", REPO_ROOT / "install" / "build_extension.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def addon_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built and validated by Blender's own extension tool."""
    return _build_module().build(tmp_path_factory.mktemp("dist"))


@pytest.fixture(scope="session")
def addon(tmp_path_factory: pytest.TempPathFactory):
    """The staged add-on (with its vendored protocol.py) as an importable package, for the bpy-free modules."""
    root = tmp_path_factory.mktemp("staged")
    _build_module().stage(root / ADDON_PACKAGE)
    sys.path.insert(0, str(root))
    return importlib.import_module(ADDON_PACKAGE)


PREAMBLE = '''
import json, sys
import bpy  # first: it makes Blender's own modules (addon_utils) importable
import addon_utils

PARAMS = json.loads(open(sys.argv[1], encoding="utf-8").read())
EXT = addon_utils.enable("{module}", default_set=True, handle_error=None)
assert EXT is not None, "extension not enabled"


def done(result):
    with open(sys.argv[2], "w", encoding="utf-8") as fh:
        json.dump(result, fh)


def describe(objects):
    """Name -> type, collections, matrix, custom properties; local/world bounds of meshes; camera lens and background."""
    import numpy as np

    out = {}
    for obj in objects:
        entry = {"type": obj.type, "collections": [c.name for c in obj.users_collection],
                 "matrix_world": [list(row) for row in obj.matrix_world],
                 "props": {k: obj[k] for k in obj.keys() if k.startswith("scenewright_")}}
        if obj.type == "MESH":
            local = np.array([v.co[:] for v in obj.data.vertices]).reshape(-1, 3)
            world = np.array([(obj.matrix_world @ v.co)[:] for v in obj.data.vertices]).reshape(-1, 3)
            entry.update(mesh=obj.data.name, mesh_users=obj.data.users, faces=len(obj.data.polygons),
                         local_min=local.min(0).tolist(), local_max=local.max(0).tolist(),
                         world_min=world.min(0).tolist(), world_max=world.max(0).tolist(),
                         materials=[{"name": m.name, "diffuse": list(m.diffuse_color),
                                     "base": list(m.node_tree.nodes["Principled BSDF"].inputs["Base Color"].default_value)}
                                    for m in obj.data.materials if m is not None])
        if obj.type == "CAMERA":
            background = obj.data.background_images[0] if obj.data.background_images else None
            entry.update(angle=obj.data.angle, sensor_fit=obj.data.sensor_fit, show_bg=obj.data.show_background_images,
                         bg_image=background.image.name if background and background.image else None)
        out[obj.name] = entry
    return out

'''


@dataclass
class BlenderRun:
    result: dict | None
    returncode: int
    stdout: str
    stderr: str


class Blender:
    """Runs scripts in fresh Blender sessions that share one temporary user folder with the extension installed."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        for var, sub in (("BLENDER_USER_CONFIG", "config"), ("BLENDER_USER_SCRIPTS", "scripts"),
                         ("BLENDER_USER_EXTENSIONS", "extensions"), ("BLENDER_USER_DATAFILES", "datafiles")):
            (root / sub).mkdir(parents=True, exist_ok=True)
            self.env[var] = str(root / sub)
        self.env.pop("SCENEWRIGHT_TOKEN", None)
        self._count = 0

    def run_raw(self, code: str, params: dict | None = None, timeout: float = 300) -> BlenderRun:
        """Run `code` in a new bpy session; it calls done(dict) to hand back a JSON result."""
        self._count += 1
        script = self.root / f"script_{self._count}.py"
        params_path, result_path = self.root / f"params_{self._count}.json", self.root / f"result_{self._count}.json"
        script.write_text(code, encoding="utf-8")
        params_path.write_text(json.dumps(params or {}), encoding="utf-8")
        proc = subprocess.run([sys.executable, str(script), str(params_path), str(result_path)], env=self.env,
                              capture_output=True, text=True, timeout=timeout)
        result = json.loads(result_path.read_text(encoding="utf-8")) if result_path.exists() else None
        return BlenderRun(result, proc.returncode, proc.stdout, proc.stderr)

    def run(self, code: str, params: dict | None = None, timeout: float = 300) -> BlenderRun:
        """Like run_raw, with the extension enabled first and PARAMS / done() defined."""
        run = self.run_raw(PREAMBLE.replace("{module}", ADDON_MODULE) + textwrap.dedent(code), params, timeout)
        if run.result is None:
            raise AssertionError(f"Blender script gave no result (exit {run.returncode}):\n"
                                 f"{run.stdout[-3000:]}\n{run.stderr[-3000:]}")
        return run


@pytest.fixture
def fresh_blender(tmp_path: Path) -> Blender:
    """Blender sessions with their own empty user folders: nothing installed yet."""
    return Blender(tmp_path / "blender")


@pytest.fixture(scope="session")
def blender(tmp_path_factory: pytest.TempPathFactory, addon_zip: Path) -> Blender:
    """A temporary Blender user folder with the extension zip installed into its user repository."""
    session = Blender(tmp_path_factory.mktemp("blender-user"))
    install = session.run_raw(textwrap.dedent('''
        import json, sys
        import bpy
        params = json.loads(open(sys.argv[1]).read())
        result = bpy.ops.extensions.package_install_files(filepath=params["zip"], repo="user_default", enable_on_install=True)
        with open(sys.argv[2], "w") as fh:
            json.dump({"result": sorted(result), "addons": sorted(bpy.context.preferences.addons.keys())}, fh)
    '''), {"zip": str(addon_zip)})
    assert install.result is not None, install.stderr
    assert install.result["result"] == ["FINISHED"]
    assert ADDON_MODULE in install.result["addons"]
    return session


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight model folder (meaningless meshes, real plumbing)."""
    from scenewright.pipeline import make_tiny_random_pipeline

    return make_tiny_random_pipeline(tmp_path_factory.mktemp("tiny-model") / "model")


@pytest.fixture(scope="session")
def backend(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, addon):
    """A real `python -m scenewright serve` process, started by the add-on's own backend_process module."""
    from scenewright_addon.backend_process import LocalBackend

    local = LocalBackend(sys.executable, tmp_path_factory.mktemp("backend-data"), model=str(tiny_model), device="cpu",
                         startup_timeout=180)
    local.start()
    yield local
    local.stop()


@pytest.fixture(scope="session")
def example_cases() -> list[Path]:
    """The project's shipped example cases (image.png + seg.png + scene.json), 3 or 4 objects each."""
    folder = REPO_ROOT / "backend" / "scenewright" / "assets" / "examples"
    return [folder / name for name in ("desk", "sofa-and-lamps", "front-behind")]
