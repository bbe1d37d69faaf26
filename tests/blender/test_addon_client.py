"""The add-on's HTTP client and backend-process manager alone (no bpy), against the real service."""

from __future__ import annotations

import http.server
import io
import json
import socket
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def small_scene() -> tuple[bytes, bytes]:
    """Two boxes on a light background and their seg map (gray 1 and 2)."""
    rgb = np.full((64, 64, 3), 230, np.uint8)
    seg = np.zeros((64, 64), np.uint8)
    rgb[30:50, 8:28], seg[30:50, 8:28] = (200, 60, 40), 1
    rgb[20:50, 36:56], seg[20:50, 36:56] = (40, 90, 200), 2
    return _png(rgb), _png(seg)


@pytest.fixture()
def client(addon, backend):
    from scenewright_addon.client import BackendClient

    return BackendClient(backend.connection)


def test_health_reports_our_protocol_version(addon, client):
    info = client.health()
    assert info.protocol_version == addon.protocol.PROTOCOL_VERSION and info.status


def test_submit_wait_download_and_parse(addon, client, small_scene, tmp_path):
    image, seg = small_scene
    seen = []
    status = client.submit(image, {"steps": 2, "mesh_resolution": 32, "seed": 1}, seg_png=seg)
    final = client.wait(status.job_id, on_status=lambda s: seen.append(s.state), poll_s=0.2)
    assert final.state == "succeeded" and seen[-1] == "succeeded"
    glb, manifest_path = client.download_result(final.job_id, tmp_path / "res")
    assert glb.read_bytes()[:4] == b"glTF"
    manifest = addon.protocol.ResultManifest.from_dict(json.loads(manifest_path.read_text()))
    assert manifest.job_id == final.job_id and sorted(i.id for i in manifest.instances) == [1, 2]
    assert final.job_id in [job.job_id for job in client.jobs()]


def test_cancel_stops_a_running_job(client, small_scene):
    image, seg = small_scene
    status = client.submit(image, {"steps": 200, "mesh_resolution": 32}, seg_png=seg)
    final = client.wait(status.job_id, should_cancel=lambda: True, poll_s=0.2, timeout_s=120)
    assert final.state == "cancelled"


def test_backend_rejections_carry_its_message(addon, client, small_scene):
    from scenewright_addon.client import RequestRejected

    image, _ = small_scene
    wrong_size = _png(np.ones((32, 32), np.uint8))
    with pytest.raises(RequestRejected) as info:
        client.submit(image, {"steps": 2}, seg_png=wrong_size)
    assert 400 <= info.value.status < 500 and "32" in str(info.value)
    with pytest.raises(addon.protocol.SettingsError, match="steps"):  # checked before anything is sent
        client.submit(image, {"steps": 0}, seg_png=wrong_size)


def test_wrong_token_closed_port_and_foreign_server(addon, backend):
    from scenewright_addon.client import AuthError, BackendClient, BackendNotRunning, Connection, WrongService

    with pytest.raises(AuthError, match="refused the access token"):
        BackendClient(Connection(backend.connection.url, "wrong")).health()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    with pytest.raises(BackendNotRunning, match="connection refused"):
        BackendClient(Connection(closed, "t")).health()
    with _serve(http.server.SimpleHTTPRequestHandler) as url:  # some other web server: wrong port
        with pytest.raises(WrongService, match="wrong port"):
            BackendClient(Connection(url, "t")).health()


def test_version_mismatch_and_timeout(addon):
    from scenewright_addon.client import BackendClient, BackendTimeout, Connection, VersionMismatch

    newer = addon.protocol.PROTOCOL_VERSION + 1

    class NewerBackend(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's naming)
            body = json.dumps({"status": "ok", "protocol_version": newer, "version": "9.0", "model": None,
                               "device": "cpu"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    with _serve(NewerBackend) as url:
        with pytest.raises(VersionMismatch, match="backend is newer"):
            BackendClient(Connection(url, "t")).health()
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        with pytest.raises(BackendTimeout, match="did not answer within"):
            BackendClient(Connection(url, "t", timeout=0.5)).health()


def test_local_backend_is_found_through_its_state_file(addon, backend, tmp_path):
    from scenewright_addon.backend_process import LocalBackend, resolve_python
    from scenewright_addon.client import BackendError

    adopted = LocalBackend(sys.executable, backend.data_dir).running_connection()
    assert adopted is not None and adopted.url == backend.connection.url and adopted.token == backend.connection.token
    assert LocalBackend(sys.executable, tmp_path).running_connection() is None
    assert resolve_python(Path(sys.executable).parent.parent) == Path(sys.executable).parent / "python"
    with pytest.raises(BackendError, match="no Python found"):
        resolve_python(tmp_path)


class _serve:
    """A stdlib HTTP server on a free loopback port in a thread, for the duration of a with-block."""

    def __init__(self, handler: type) -> None:
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)

    def __enter__(self) -> str:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_unload_frees_the_model_and_load_brings_it_back(client):
    model_id = client.models()["models"][0]["id"]
    assert client.unload_model().model is None and client.models()["loaded"] is None
    assert client.load_model(model_id).model == model_id


def test_a_backend_that_cannot_start_says_why(addon, tmp_path):
    """The service's own message (here: a model that does not exist), not a guess about the environment."""
    from scenewright_addon.backend_process import LocalBackend
    from scenewright_addon.client import BackendError

    local = LocalBackend(sys.executable, tmp_path / "data", model=str(tmp_path / "no-such-model"), device="cpu",
                         startup_timeout=120)
    with pytest.raises(BackendError) as info:
        local.start()
    message = str(info.value)
    assert message.startswith("the backend did not start: ") and "no-such-model" in message
    assert "Is scenewright installed" not in message
