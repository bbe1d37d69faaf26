"""Helpers for the service tests: run `python -m scenewright serve` as a real process and talk to it over HTTP."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from scenewright.protocol import FINISHED_STATES, STATE_FILE_NAME


class ServiceProcess:
    """One `scenewright serve` process; found through the state file it writes, as a real client finds it."""

    def __init__(self, data_dir: Path, model: Path, log_path: Path, extra_args: tuple[str, ...] = ()) -> None:
        self.data_dir = data_dir
        self.model = model
        self.log_path = log_path
        self.extra_args = extra_args
        self.proc: subprocess.Popen | None = None
        self.state: dict = {}

    def start(self, timeout: float = 120.0) -> "ServiceProcess":
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        env.pop("SCENEWRIGHT_TOKEN", None)
        cmd = [sys.executable, "-m", "scenewright", "serve", "--port", "0", "--data-dir", str(self.data_dir),
               "--model", str(self.model), "--device", "cpu", *self.extra_args]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        state_file = self.data_dir / STATE_FILE_NAME
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"service exited with {self.proc.returncode}:\n{self.log()}")
            try:
                state = json.loads(state_file.read_text())
                if state.get("pid") == self.proc.pid:
                    self.state = state
                    self._wait_ready(deadline)
                    return self
            except (OSError, ValueError):
                pass
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"service did not start within {timeout}s:\n{self.log()}")

    def _wait_ready(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            try:
                if self.get("/v1/health").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"service never answered /v1/health:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    @property
    def url(self) -> str:
        return self.state["url"]

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def headers(self, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.state['token']}", **extra}

    def request(self, method: str, path: str, **kwargs) -> httpx.Response:
        headers = {**self.headers(), **kwargs.pop("headers", {})}
        return httpx.request(method, self.url + path, headers=headers, timeout=60.0, **kwargs)

    def get(self, path: str, **kwargs) -> httpx.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs) -> httpx.Response:
        return self.request("POST", path, **kwargs)

    def submit(self, image: bytes, seg: bytes | None = None, masks: list[bytes] | None = None,
               settings: dict | None = None) -> httpx.Response:
        files = [("image", ("image.png", image, "image/png"))]
        if seg is not None:
            files.append(("seg", ("seg.png", seg, "image/png")))
        files += [("masks", (f"mask{k}.png", m, "image/png")) for k, m in enumerate(masks or [])]
        return self.post("/v1/jobs", files=files, data={"settings": json.dumps(settings or {})})

    def wait(self, job_id: str, until=FINISHED_STATES, timeout: float = 180.0, condition=None) -> dict:
        """Poll the job until its state is in `until` (and `condition(status)` holds, when given)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.get(f"/v1/jobs/{job_id}").json()
            if status["state"] in until and (condition is None or condition(status)):
                return status
            if status["state"] in FINISHED_STATES and status["state"] not in until:
                raise AssertionError(f"job ended {status['state']}: {status['message']}\n{self.log()}")
            time.sleep(0.1)
        raise AssertionError(f"job {job_id} still {status} after {timeout}s")

    def stop(self, timeout: float = 60.0) -> int:
        """Clean shutdown, as Ctrl+C does."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        """Hard stop (SIGKILL): no chance to clean up, like a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def scene_arrays(num_instances: int = 3, size: tuple[int, int] = (64, 80)) -> tuple[np.ndarray, np.ndarray]:
    """A small synthetic scene: coloured boxes on white, and its MIDI seg map (gray value k+1 = instance k)."""
    height, width = size
    rgb = np.full((height, width, 3), 255, np.uint8)
    seg = np.zeros((height, width), np.uint8)
    rng = np.random.default_rng(num_instances)
    for k in range(num_instances):
        x0 = int(k * width / num_instances) + 1
        x1 = int((k + 1) * width / num_instances) - 1
        y0 = height // 3 + (k % 3)
        rgb[y0:height - 4, x0:x1] = rng.integers(0, 200, 3)
        seg[y0:height - 4, x0:x1] = k + 1
    return rgb, seg


def data_dir_snapshot(data_dir: Path) -> set[str]:
    """The data dir's entries and job folders, to show that a refused request created nothing.

    Files inside existing job folders are left out: a job still finishing may rewrite its own status.
    """
    jobs = data_dir / "jobs"
    return {p.name for p in data_dir.iterdir()} | ({f"jobs/{p.name}" for p in jobs.iterdir()} if jobs.is_dir() else set())
