"""HTTP client for the SceneWright backend service: standard library only, no bpy.

Every failure becomes a `BackendError` subclass whose message names the problem
and a concrete fix, so the panel and the command line can show it as is.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from . import protocol


class BackendError(RuntimeError):
    """A request to the backend failed; str(error) says what to do about it."""


class BackendNotRunning(BackendError):
    """Nothing listens at the URL (connection refused / unknown host)."""


class WrongService(BackendError):
    """Something answers at the URL, but it is not a SceneWright backend (wrong port?)."""


class AuthError(BackendError):
    """The backend refused the access token (401/403)."""


class VersionMismatch(BackendError):
    """The backend speaks another protocol version than this add-on."""


class BackendTimeout(BackendError):
    """The backend did not answer in time."""


class RequestRejected(BackendError):
    """The backend answered 4xx/5xx to a well-formed request; the message is the backend's."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Connection:
    """Where the backend is and how to authenticate."""

    url: str
    token: str = ""
    timeout: float = 10.0


def read_state_file(data_dir: str | Path) -> dict[str, Any] | None:
    """The service's <data-dir>/service.json ({url, pid, token, ...}), or None if absent or unreadable."""
    path = Path(data_dir) / protocol.STATE_FILE_NAME
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) and "url" in state else None


class BackendClient:
    """One method per endpoint of protocol.ENDPOINTS; blocking, meant for worker threads."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.base = connection.url.rstrip("/")

    # ---- endpoints ----------------------------------------------------------------------

    def health(self) -> protocol.HealthInfo:
        """GET /v1/health, with the protocol version checked."""
        data = self._json("GET", "/health")
        if not isinstance(data, dict) or "protocol_version" not in data:
            raise WrongService(f"{self.base} answered, but not like a SceneWright backend; check the URL and port")
        info = _health_info(data)
        if info.protocol_version != protocol.PROTOCOL_VERSION:
            newer = "backend" if info.protocol_version > protocol.PROTOCOL_VERSION else "add-on"
            raise VersionMismatch(
                f"the backend speaks protocol {info.protocol_version}, this add-on protocol {protocol.PROTOCOL_VERSION}; "
                f"the {newer} is newer: update the other one so both come from the same SceneWright release"
            )
        return info

    def models(self) -> dict[str, Any]:
        return self._json("GET", "/models")

    def load_model(self, model: str) -> protocol.HealthInfo:
        return _health_info(self._json("POST", "/models/load", json_body={"model": model}))

    def unload_model(self) -> protocol.HealthInfo:
        return _health_info(self._json("POST", "/models/unload"))

    def submit(
        self,
        image_png: bytes,
        settings: dict[str, Any],
        seg_png: bytes | None = None,
        masks_png: list[bytes] | None = None,
    ) -> protocol.JobStatus:
        """POST /v1/jobs with the scene image and either a seg map or one PNG per instance mask."""
        if (seg_png is None) == (masks_png is None):
            raise ValueError("pass exactly one of seg_png and masks_png")
        protocol.GenerationSettings.from_dict(settings)  # the service validates too; failing here is faster
        files = [("image", "image.png", image_png)]
        if seg_png is not None:
            files.append(("seg", "seg.png", seg_png))
        else:
            files += [("masks", f"mask_{i}.png", data) for i, data in enumerate(masks_png or [])]
        body, content_type = _multipart(files, {"settings": json.dumps(settings)})
        if len(body) > protocol.MAX_UPLOAD_BYTES:
            raise RequestRejected(
                f"the upload is {len(body) / 2**20:.1f} MiB, more than the {protocol.MAX_UPLOAD_BYTES // 2**20} MiB "
                "the backend accepts; use a smaller reference image", 413)
        return protocol.JobStatus.from_dict(self._json("POST", "/jobs", body=body, content_type=content_type))

    def job(self, job_id: str) -> protocol.JobStatus:
        return protocol.JobStatus.from_dict(self._json("GET", f"/jobs/{_quote(job_id)}"))

    def jobs(self) -> list[protocol.JobStatus]:
        return [protocol.JobStatus.from_dict(j) for j in self._json("GET", "/jobs")["jobs"]]

    def cancel(self, job_id: str) -> protocol.JobStatus:
        return protocol.JobStatus.from_dict(self._json("POST", f"/jobs/{_quote(job_id)}/cancel"))

    def download_result(self, job_id: str, folder: str | Path) -> tuple[Path, Path]:
        """Fetch result.glb and result.json into `folder`; returns (glb, json) paths."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for name in ("result.glb", "result.json"):
            data = self._request("GET", f"/jobs/{_quote(job_id)}/{name}")
            tmp = folder / (name + ".part")
            tmp.write_bytes(data)
            tmp.replace(folder / name)
            paths.append(folder / name)
        return paths[0], paths[1]

    def wait(
        self,
        job_id: str,
        on_status: Callable[[protocol.JobStatus], None] | None = None,
        should_cancel: Callable[[], bool] | None = None,
        poll_s: float = 0.5,
        timeout_s: float | None = None,
    ) -> protocol.JobStatus:
        """Poll until the job finishes; asks the backend to cancel once should_cancel() turns true."""
        start, cancel_sent = time.monotonic(), False
        while True:
            status = self.job(job_id)
            if on_status is not None:
                on_status(status)
            if status.state in protocol.FINISHED_STATES:
                return status
            if should_cancel is not None and should_cancel() and not cancel_sent:
                self.cancel(job_id)
                cancel_sent = True
            if timeout_s is not None and time.monotonic() - start > timeout_s:
                raise BackendTimeout(f"job {job_id} did not finish within {timeout_s:.0f} s; it keeps running on the backend")
            time.sleep(poll_s)

    # ---- transport ----------------------------------------------------------------------

    def _json(self, method: str, path: str, json_body: Any = None, body: bytes | None = None,
              content_type: str | None = None) -> Any:
        if json_body is not None:
            body, content_type = json.dumps(json_body).encode(), "application/json"
        raw = self._request(method, path, body, content_type)
        try:
            return json.loads(raw)
        except ValueError:
            raise WrongService(f"{self.base} answered {path} with something that is not JSON; is this the SceneWright "
                               "backend's URL and port?") from None

    def _request(self, method: str, path: str, body: bytes | None = None, content_type: str | None = None) -> bytes:
        url = f"{self.base}{protocol.API_PREFIX}{path}"
        headers = {"Accept": "application/json"}
        if self.connection.token:
            headers["Authorization"] = f"Bearer {self.connection.token}"
        if content_type:
            headers["Content-Type"] = content_type
        request = urllib.request.Request(url, data=body, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self.connection.timeout) as response:
                return response.read()
        except urllib.error.HTTPError as exc:
            raise self._http_error(exc, path) from None
        except (TimeoutError, socket.timeout):
            raise BackendTimeout(f"the backend at {self.base} did not answer within {self.connection.timeout:g} s; "
                                 "it may be busy loading a model: try again, or raise the timeout in the preferences") from None
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, (TimeoutError, socket.timeout)):
                raise BackendTimeout(f"the backend at {self.base} did not answer within {self.connection.timeout:g} s") from None
            if isinstance(reason, ConnectionRefusedError):
                raise BackendNotRunning(f"no backend is running at {self.base} (connection refused); start the local "
                                        "backend in the add-on preferences, or check the URL and port") from None
            if isinstance(reason, socket.gaierror):
                raise BackendNotRunning(f"cannot resolve the host of {self.base}; check the backend URL") from None
            raise BackendNotRunning(f"cannot reach the backend at {self.base} ({reason}); check the URL and that it runs")\
                from None
        except (ConnectionError, OSError) as exc:  # reset or closed mid-answer
            raise BackendNotRunning(f"the connection to {self.base} broke ({exc}); is the backend still running?") from None

    def _http_error(self, exc: urllib.error.HTTPError, path: str) -> BackendError:
        detail = _error_detail(exc)
        if exc.code in (401, 403):
            return AuthError(f"the backend at {self.base} refused the access token ({exc.code}: {detail}); copy the token "
                             f"from its {protocol.STATE_FILE_NAME} or {protocol.TOKEN_ENV_VAR} into the preferences")
        if exc.code == 404 and path == "/health":
            return WrongService(f"{self.base} has no SceneWright health endpoint (404); wrong port or URL?")
        return RequestRejected(f"the backend rejected the request ({exc.code}): {detail}", exc.code)


def _health_info(data: dict[str, Any]) -> protocol.HealthInfo:
    return protocol.HealthInfo(**{k: v for k, v in data.items() if k in protocol.HealthInfo.__dataclass_fields__})


def _error_detail(exc: urllib.error.HTTPError) -> str:
    """FastAPI puts the message in {"detail": ...}; fall back to the raw text."""
    try:
        raw = exc.read().decode("utf-8", "replace")
    except OSError:
        return exc.reason or ""
    try:
        detail = json.loads(raw).get("detail", raw)
    except (ValueError, AttributeError):
        return raw.strip()[:500] or str(exc.reason)
    if isinstance(detail, list):  # validation errors: [{"loc": [...], "msg": ...}]
        return "; ".join(str(d.get("msg", d)) if isinstance(d, dict) else str(d) for d in detail)
    return str(detail)


def _quote(job_id: str) -> str:
    return urllib.parse.quote(job_id, safe="")


def _multipart(files: list[tuple[str, str, bytes]], fields: dict[str, str]) -> tuple[bytes, str]:
    """multipart/form-data body: (field, filename, PNG bytes) files plus plain text fields."""
    boundary = f"----scenewright{uuid.uuid4().hex}"
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode() + value.encode() + b"\r\n")
    for name, filename, data in files:
        head = (f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                "Content-Type: image/png\r\n\r\n")
        parts.append(head.encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"
