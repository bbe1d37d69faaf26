"""Bad inputs, limits and auth failures: each gets a 4xx whose message says what to fix, and nothing is written."""

from __future__ import annotations

import io
import socket

import httpx
import numpy as np
import pytest
from PIL import Image
from .servicekit import data_dir_snapshot, png_bytes, scene_arrays

from scenewright.protocol import MAX_IMAGE_SIDE, MAX_INSTANCES, MAX_UPLOAD_BYTES

RGB, SEG = scene_arrays(3)
IMAGE, SEG_PNG = png_bytes(RGB), png_bytes(SEG)
MASKS = [png_bytes(((SEG == k + 1) * 255).astype(np.uint8)) for k in range(3)]


def many_instance_seg(count: int) -> bytes:
    seg = np.zeros(RGB.shape[:2], np.uint8)
    for k in range(count):
        seg[k * 3:(k + 1) * 3, :] = k + 1
    return png_bytes(seg)


def jpeg(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG")
    return buffer.getvalue()


def settings(**values) -> dict:
    return dict(image=IMAGE, seg=SEG_PNG, settings=values)


BIG = png_bytes(np.zeros((16, MAX_IMAGE_SIDE + 1, 3), np.uint8))
TINY, TINY_SEG = png_bytes(np.zeros((8, 8, 3), np.uint8)), png_bytes(np.ones((8, 8), np.uint8))
WHITE_20x30 = png_bytes(np.zeros((20, 30), np.uint8) + 255)

CASES = {  # name: (submit() arguments, words the 400 message must contain)
    "image not an image": (dict(image=b"this is not a picture", seg=SEG_PNG),
                           "the image is not a readable image (its format is not recognised)"),
    "image empty": (dict(image=b"", seg=SEG_PNG), "the image is empty"),
    "corrupt png": (dict(image=IMAGE[: len(IMAGE) // 2], seg=SEG_PNG), "not a readable image"),
    "seg not an image": (dict(image=IMAGE, seg=b"\x89PNG\r\n\x1a\n garbage"), "the seg map is not a readable image"),
    "seg of another size": (dict(image=IMAGE, seg=png_bytes(SEG[:32, :40])), "must have the same size"),
    "mask of another size": (dict(image=IMAGE, masks=[WHITE_20x30]), "must have the same size"),
    "no instances in seg": (dict(image=IMAGE, seg=png_bytes(np.zeros_like(SEG))), "holds no instances"),
    "empty mask": (dict(image=IMAGE, masks=[MASKS[0], png_bytes(np.zeros_like(SEG))]), "mask 1 is empty"),
    "too many instances in seg": (dict(image=IMAGE, seg=many_instance_seg(MAX_INSTANCES + 1)), f"at most {MAX_INSTANCES}"),
    "too many masks": (dict(image=IMAGE, masks=MASKS * 6), f"at most {MAX_INSTANCES}"),
    "seg and masks": (dict(image=IMAGE, seg=SEG_PNG, masks=MASKS), "not both"),
    "neither seg nor masks": (dict(image=IMAGE), "no instances given"),
    "image too large": (dict(image=BIG, seg=SEG_PNG), f"at most {MAX_IMAGE_SIDE}"),
    "image too small": (dict(image=TINY, seg=TINY_SEG), "at least"),
    "steps out of range": (settings(steps=0), "steps must be between"),
    "steps too many": (settings(steps=100000), "steps must be between"),
    "guidance NaN": (settings(guidance_scale=float("nan")), "guidance_scale must be a finite number"),
    "guidance infinite": (settings(guidance_scale=float("inf")), "guidance_scale must be a finite number"),
    "resolution too low": (settings(mesh_resolution=2), "mesh_resolution must be between"),
    "seed a string": (settings(seed="one"), "seed must be an integer"),
    "unknown setting": (settings(stepz=3), "unknown setting"),
    "bad mi_blocks": (settings(mi_blocks="all"), "mi_blocks must be a list"),
    "unknown model": (settings(model="someone/unknown"), "unknown model"),
    "unknown user folder model": (settings(model="~no-such-user-h5/m"), "unknown model"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_submission_is_refused_and_nothing_written(service, name):
    kwargs, words = CASES[name]
    before = data_dir_snapshot(service.data_dir)
    response = service.submit(**kwargs)
    assert response.status_code == 400, response.text
    assert words in response.json()["detail"], response.json()["detail"]
    assert " at 0x" not in response.json()["detail"]  # no in-memory object names
    assert data_dir_snapshot(service.data_dir) == before


@pytest.mark.parametrize("settings, words", [
    ("{not json", "settings is not valid JSON"),
    ("[1, 2]", "settings must be a JSON object"),
    ("[" * 100_000 + "]" * 100_000, "settings is nested too deeply"),
    ('{"steps": 1' + "0" * 5000 + "}", "settings is not valid JSON"),  # beyond Python's int digit limit
    ('{"seed": ' + "9" * 5000 + "}", "settings is not valid JSON"),
])
def test_settings_that_are_not_a_json_object(service, settings, words):
    before = data_dir_snapshot(service.data_dir)
    files = [("image", ("i.png", IMAGE, "image/png")), ("seg", ("s.png", SEG_PNG, "image/png"))]
    response = service.post("/v1/jobs", files=files, data={"settings": settings})
    assert response.status_code == 400 and words in response.json()["detail"]
    assert data_dir_snapshot(service.data_dir) == before


def test_missing_image_field_names_the_field(service):
    response = service.post("/v1/jobs", files=[("seg", ("s.png", SEG_PNG, "image/png"))])
    assert response.status_code == 422 and "image" in response.json()["detail"]


def test_jpeg_image_is_accepted_as_any_pil_image(service):
    response = service.submit(jpeg(RGB), seg=SEG_PNG, settings={"steps": 1, "mesh_resolution": 32})
    assert response.status_code == 202, response.text
    service.post(f"/v1/jobs/{response.json()['job_id']}/cancel")
    service.wait(response.json()["job_id"], until=("cancelled", "succeeded"))


def raw_request(port: int, head: str, body: bytes = b"") -> tuple[int, str]:
    """Send bytes by hand: httpx would not let us lie about Content-Length."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head.encode("latin-1") + b"Connection: close\r\n\r\n" + body)
        data = b""
        while chunk := sock.recv(65536):  # the whole answer: the service closes the connection after it
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, data.decode("latin-1")


def test_declared_upload_size_over_the_limit(service):
    before = data_dir_snapshot(service.data_dir)
    head = (f"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1:{service.port}\r\nAuthorization: Bearer {service.state['token']}\r\n"
            f"Content-Type: multipart/form-data; boundary=x\r\nContent-Length: {MAX_UPLOAD_BYTES + 1}\r\n")
    status, text = raw_request(service.port, head)
    assert status == 413 and "upload too large" in text
    assert data_dir_snapshot(service.data_dir) == before


def test_streamed_upload_over_the_limit(service):
    before = data_dir_snapshot(service.data_dir)
    chunk = b"\0" * (1 << 20)

    def body():  # chunked transfer: no Content-Length, the service must count
        for _ in range(MAX_UPLOAD_BYTES // len(chunk) + 2):
            yield chunk

    try:
        response = httpx.post(service.url + "/v1/jobs", content=body(), timeout=60,
                              headers={**service.headers(), "Content-Type": "multipart/form-data; boundary=x"})
        assert response.status_code == 413 and "upload too large" in response.json()["detail"]
    except (httpx.WriteError, httpx.RemoteProtocolError):
        pass  # the service answered and closed the connection while the client was still sending
    assert data_dir_snapshot(service.data_dir) == before
    assert service.get("/v1/health").status_code == 200


# ---- auth, Host and Origin ---------------------------------------------------------------

def test_missing_or_wrong_token_is_401(service):
    before = data_dir_snapshot(service.data_dir)
    files = [("image", ("i.png", IMAGE, "image/png")), ("seg", ("s.png", SEG_PNG, "image/png"))]
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {service.state['token']}"},
                    {"Authorization": "Bearer " + service.state["token"][:-1]}):
        for method, path, extra in (("GET", "/v1/health", {}), ("GET", "/v1/jobs", {}), ("POST", "/v1/jobs", {"files": files}),
                                    ("GET", "/openapi.json", {})):
            response = httpx.request(method, service.url + path, headers=headers, timeout=30, **extra)
            assert response.status_code == 401, (headers, path)
            assert "token" in response.json()["detail"] and response.headers["www-authenticate"] == "Bearer"
    assert data_dir_snapshot(service.data_dir) == before


@pytest.mark.parametrize("host", ["evil.example:{port}", "127.0.0.1:1", "localhost", "127.0.0.1.nip.io:{port}", ""])
def test_foreign_host_is_refused(service, host):
    response = service.get("/v1/health", headers={"Host": host.format(port=service.port)})
    assert response.status_code == 403 and "Host header" in response.json()["detail"]


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}", "LOCALHOST:{port}", "[::1]:{port}"])
def test_loopback_hosts_are_accepted(service, host):
    assert service.get("/v1/health", headers={"Host": host.format(port=service.port)}).status_code == 200


@pytest.mark.parametrize("origin", ["http://evil.example", "null", "http://127.0.0.1:1", "https://127.0.0.1:{port}"])
def test_foreign_origin_is_refused(service, origin):
    before = data_dir_snapshot(service.data_dir)
    headers = {"Origin": origin.format(port=service.port)}
    assert service.get("/v1/jobs", headers=headers).status_code == 403
    files = [("image", ("i.png", IMAGE, "image/png")), ("seg", ("s.png", SEG_PNG, "image/png"))]
    response = service.post("/v1/jobs", headers=headers, files=files)
    assert response.status_code == 403 and "origin" in response.json()["detail"]
    assert data_dir_snapshot(service.data_dir) == before


def test_own_origin_is_accepted(service):
    assert service.get("/v1/health", headers={"Origin": f"http://127.0.0.1:{service.port}"}).status_code == 200


def test_unknown_route_needs_token_too(service):
    assert httpx.get(service.url + "/v1/nothing", timeout=30).status_code == 401
    response = service.get("/v1/nothing")
    assert response.status_code == 404 and isinstance(response.json()["detail"], str)


def test_allow_host_adds_names_for_tunnels_and_remote_clients(service):
    for host in ("tunnel.example:9999", f"gpubox:{service.port}", f"127.0.0.1:{service.port}"):
        assert service.get("/v1/health", headers={"Host": host}).status_code == 200, host
    for host in (f"tunnel.example:{service.port}", "gpubox:9999", "evil.example:9999"):
        assert service.get("/v1/health", headers={"Host": host}).status_code == 403, host


@pytest.mark.parametrize("name", ["Host", "Origin", "Authorization"])
def test_a_repeated_security_header_is_refused(service, name):
    """Two Host, Origin or Authorization headers (a foreign one first, the right one last) are refused outright."""
    own = {"Host": f"127.0.0.1:{service.port}", "Origin": f"http://127.0.0.1:{service.port}",
           "Authorization": f"Bearer {service.state['token']}"}
    foreign = {"Host": "evil.example", "Origin": "http://evil.example", "Authorization": "Bearer wrong"}
    head = f"GET /v1/jobs HTTP/1.1\r\n{name}: {foreign[name]}\r\n"
    head += "".join(f"{key}: {value}\r\n" for key, value in own.items())
    status, text = raw_request(service.port, head)
    assert status == 400
    # HTTP/1.1 itself forbids two Host headers: the server's HTTP layer refuses them before the app
    assert f"repeats the {name.lower()} header" in text or (name == "Host" and "Invalid HTTP request" in text)
    single = "".join(f"{key}: {value}\r\n" for key, value in own.items())
    assert raw_request(service.port, f"GET /v1/jobs HTTP/1.1\r\n{single}")[0] == 200
