"""Loading model folders and hub repo ids: strict keys, dtypes, the HF cache offline, errors, and saving back."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from scenewright.image_processing import ImageProcessorConfig
from scenewright.loading import (
    ModelLoadError,
    load_component,
    load_components,
    read_model_index,
    resolve_source,
    save_pipeline,
)

REPO_ID = "VAST-AI/MIDI-3D"
MODULES = ("transformer", "vae", "image_encoder_1", "image_encoder_2")


@pytest.fixture(scope="module")
def tiny(golden_dir: Path) -> Path:
    return golden_dir / "tiny-midi-3d"


def _hub_env(**overrides: str) -> dict[str, str]:
    """The environment of a fresh process with our own Hugging Face settings only."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env["HF_HUB_DISABLE_TELEMETRY"] = "1"
    env.update(overrides)
    return env


def _run_python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    # A fresh interpreter: huggingface_hub reads HF_* variables once, at import.
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def _param_sums(components: dict) -> dict[str, float]:
    return {name: float(sum(p.double().sum() for p in components[name].state_dict().values())) for name in MODULES}


def test_load_by_path_gives_every_component(tiny):
    components = load_components(tiny)
    assert {k: type(v).__name__ for k, v in components.items()} == {
        "transformer": "TripoSGDiTModel",
        "vae": "TripoSGVAEModel",
        "scheduler": "RectifiedFlowScheduler",
        "image_encoder_1": "CLIPVisionModelWithProjection",
        "image_encoder_2": "Dinov2Model",
        "feature_extractor_1": "ImageProcessorConfig",
        "feature_extractor_2": "ImageProcessorConfig",
    }
    stored = load_file(tiny / "image_encoder_2" / "model.safetensors")
    for key, value in components["image_encoder_2"].state_dict().items():
        assert torch.equal(value, stored[key]), key
    assert components["feature_extractor_2"].size == {"shortest_edge": 64}
    assert not components["transformer"].training


def _fill_hub_cache(cache: Path, tiny: Path) -> Path:
    """A cache in huggingface_hub's layout: blobs, snapshots/<sha>/ with links to them, refs/main."""
    repo = cache / ("models--" + REPO_ID.replace("/", "--"))
    sha = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo / "snapshots" / sha
    for i, file in enumerate(sorted(p for p in tiny.rglob("*") if p.is_file())):
        blob = repo / "blobs" / f"{i:040x}"
        blob.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(file, blob)
        link = snapshot / file.relative_to(tiny)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(sha)
    return snapshot


_LOAD_FROM_HUB = f"""
import json
from scenewright.loading import load_components, resolve_source
components = load_components({REPO_ID!r})
sums = {{n: float(sum(p.double().sum() for p in components[n].state_dict().values())) for n in {MODULES!r}}}
print(json.dumps({{"folder": str(resolve_source({REPO_ID!r})), "sums": sums}}))
"""


@pytest.mark.parametrize("variable", ["HF_HUB_CACHE", "HF_HOME"])
def test_load_repo_id_from_prefilled_cache_offline(tmp_path, tiny, variable):
    cache = tmp_path / "hub"
    snapshot = _fill_hub_cache(cache, tiny)
    env = _hub_env(HF_HUB_OFFLINE="1", **{variable: str(cache if variable == "HF_HUB_CACHE" else tmp_path)})
    proc = _run_python(_LOAD_FROM_HUB, env)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert Path(out["folder"]) == snapshot
    assert out["sums"] == pytest.approx(_param_sums(load_components(tiny)), rel=1e-12)


_EXPECT_ERROR = """
import sys
from scenewright.loading import ModelLoadError, resolve_source
try:
    resolve_source(sys.argv[1])
except ModelLoadError as exc:
    print(exc)
else:
    raise SystemExit("no error")
"""


def test_offline_and_not_cached_is_a_clear_error(tmp_path):
    env = _hub_env(HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path / "empty"))
    proc = subprocess.run(
        [sys.executable, "-c", _EXPECT_ERROR, REPO_ID], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    message = proc.stdout
    for part in (REPO_ID, "HF_HUB_OFFLINE", f"hf download {REPO_ID}", str(tmp_path / "empty"), "local model folder"):
        assert part in message


class _NoSuchRepoHub(http.server.BaseHTTPRequestHandler):
    """Answers like huggingface.co does for a repo that does not exist."""

    def do_GET(self) -> None:
        self.send_response(404)
        self.send_header("X-Error-Code", "RepoNotFound")
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"error": "Repository not found"}')

    do_HEAD = do_GET

    def log_message(self, *args) -> None:
        pass


def test_unknown_repo_id_is_a_clear_error(tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NoSuchRepoHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = _hub_env(HF_ENDPOINT=f"http://127.0.0.1:{server.server_address[1]}", HF_HUB_CACHE=str(tmp_path))
        proc = subprocess.run(
            [sys.executable, "-c", _EXPECT_ERROR, "nobody/no-such-model"],
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    finally:
        server.shutdown()
    assert proc.returncode == 0, proc.stderr
    assert "nobody/no-such-model does not exist on the Hugging Face hub" in proc.stdout


def test_neither_folder_nor_repo_id(tmp_path):
    with pytest.raises(ModelLoadError, match="neither a folder nor a hub repo id"):
        resolve_source(tmp_path / "a" / "b" / "missing")


def _copy_component(tiny: Path, name: str, dest: Path) -> Path:
    shutil.copytree(tiny / name, dest / name)
    return dest / name


def test_missing_key_is_named(tmp_path, tiny):
    folder = _copy_component(tiny, "image_encoder_1", tmp_path)
    state = load_file(folder / "model.safetensors")
    del state["vision_model.encoder.layers.1.mlp.fc2.bias"]
    save_file(state, folder / "model.safetensors")
    with pytest.raises(ModelLoadError, match=r"missing keys \(1\): vision_model\.encoder\.layers\.1\.mlp\.fc2\.bias"):
        load_component(folder)


def test_unexpected_key_is_named(tmp_path, tiny):
    folder = _copy_component(tiny, "image_encoder_2", tmp_path)
    state = load_file(folder / "model.safetensors")
    state["encoder.layer.2.norm1.weight"] = torch.ones(48)
    save_file(state, folder / "model.safetensors")
    with pytest.raises(ModelLoadError, match=r"unexpected keys \(1\): encoder\.layer\.2\.norm1\.weight"):
        load_component(folder)


def test_wrong_shape_is_named(tmp_path, tiny):
    folder = _copy_component(tiny, "image_encoder_2", tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["num_channels"] = 3  # a 3-channel DINOv2 cannot take the 7-channel patch embedding
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=r"embeddings\.patch_embeddings\.projection\.weight \(48, 7, 14, 14\)"):
        load_component(folder)


def test_sharded_weights(tmp_path, tiny):
    folder = _copy_component(tiny, "image_encoder_2", tmp_path)
    state = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    keys = sorted(state)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    for file, shard_keys in shards.items():
        save_file({k: state[k] for k in shard_keys}, folder / file)
    weight_map = {k: file for file, shard_keys in shards.items() for k in shard_keys}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    loaded = load_component(folder).state_dict()
    assert all(torch.equal(loaded[k], state[k]) for k in keys)


@pytest.mark.parametrize("dtype,expected", [("fp16", torch.float16), ("bf16", torch.bfloat16), (torch.float32, torch.float32)])
def test_dtypes(tiny, golden_dir, dtype, expected):
    components = load_components(tiny, dtype=dtype)
    for name in MODULES:
        assert {p.dtype for p in components[name].state_dict().values()} == {expected}, name
    cases = load_file(golden_dir / "image_encoder_cases.safetensors")
    with torch.no_grad():
        out = components["image_encoder_2"](cases["dino_pixel_values"].to(expected))
    assert out.dtype == expected
    # Half precision still computes the same function: close to the float32 reference at its own precision.
    torch.testing.assert_close(out.float(), cases["dino_last_hidden_state"], atol=0.1, rtol=0.05)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error when CUDA is absent")
def test_unavailable_device_is_an_error(tiny):
    with pytest.raises(ModelLoadError, match="CUDA is not available"):
        load_component(tiny / "image_encoder_1", device="cuda")


def test_save_pipeline_round_trip(tmp_path, tiny):
    components = load_components(tiny)
    save_pipeline(components, tmp_path / "copy", extra_index={"scenewright": {"num_tokens": 64}})
    again = load_components(tmp_path / "copy")
    assert again.keys() == components.keys()
    for name, original in components.items():
        reloaded = again[name]
        assert type(reloaded) is type(original)
        if isinstance(original, ImageProcessorConfig):
            assert reloaded == original
            continue
        assert reloaded.config == original.config
        if isinstance(original, torch.nn.Module):
            a, b = original.state_dict(), reloaded.state_dict()
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    index = read_model_index(tmp_path / "copy")
    assert index["scenewright"] == {"num_tokens": 64}
    assert index["image_encoder_2"] == ["transformers", "Dinov2Model"]
    clip_config = json.loads((tmp_path / "copy" / "image_encoder_1" / "config.json").read_text())
    assert clip_config["architectures"] == ["CLIPVisionModelWithProjection"]
    assert clip_config["model_type"] == "clip_vision_model"
    assert (tmp_path / "copy" / "transformer" / "diffusion_pytorch_model.safetensors").is_file()
    assert (tmp_path / "copy" / "scheduler" / "scheduler_config.json").is_file()


def test_a_component_may_be_read_from_a_sibling_model_folder(tmp_path):
    """Two shipped models share one shape codec: the second folder names the first's instead of a copy."""
    from scenewright.loading import SHARED_COMPONENTS, load_components, read_model_index, save_pipeline
    from scenewright.pipeline import make_tiny_random_pipeline

    first = make_tiny_random_pipeline(tmp_path / "first")
    components = load_components(first)
    save_pipeline(components, tmp_path / "second", shared={"vae": "../first/vae"})
    assert not (tmp_path / "second" / "vae").exists()
    assert read_model_index(tmp_path / "second")[SHARED_COMPONENTS] == {"vae": "../first/vae"}
    again = load_components(tmp_path / "second")
    for key, value in components["vae"].state_dict().items():
        assert torch.equal(again["vae"].state_dict()[key], value)
