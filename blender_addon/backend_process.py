"""Start and stop a local backend process (`python -m scenewright serve`); no bpy.

The add-on never imports the backend: it runs it from the Python environment the
user installed it into, and finds its URL and token in the state file the
service writes into its data dir once its socket is bound.
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .client import BackendClient, BackendError, BackendNotRunning, Connection, read_state_file

LOG_NAME = "service.log"


def resolve_python(environment: str | Path) -> Path:
    """A venv/conda folder or a python executable -> the python executable; clear error if there is none."""
    if not str(environment).strip():
        raise BackendError("the backend environment is not set: in the add-on preferences, point Environment at the "
                           "Python environment scenewright is installed in, or connect to a running service")
    path = Path(os.path.abspath(os.path.expanduser(str(environment))))  # no resolve(): venv pythons are symlinks
    if path.is_file():
        return path
    candidates = [path / "bin" / "python", path / "bin" / "python3", path / "Scripts" / "python.exe", path / "python.exe"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise BackendError(f"no Python found in the backend environment {str(path)!r}; set the preferences' environment path "
                       "to the folder of the environment scenewright is installed in (or its python executable)")


class LocalBackend:
    """One backend process on 127.0.0.1 with its own data dir."""

    def __init__(self, environment: str | Path, data_dir: str | Path, model: str = "default", device: str = "auto",
                 startup_timeout: float = 300.0) -> None:
        self.environment = str(environment)
        self.data_dir = Path(os.path.expanduser(str(data_dir)))
        self.model = model
        self.device = device
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen | None = None
        self.connection: Connection | None = None
        self.pid: int | None = None

    def command(self) -> list[str]:
        return [str(resolve_python(self.environment)), "-m", "scenewright", "serve", "--host", "127.0.0.1", "--port", "0",
                "--data-dir", str(self.data_dir), "--model", self.model, "--device", self.device]

    def running_connection(self) -> Connection | None:
        """The connection of a healthy service already serving this data dir (ours or left from earlier), else None."""
        state = read_state_file(self.data_dir)
        if state is None:
            return None
        connection = Connection(str(state["url"]), str(state.get("token", "")), timeout=3.0)
        try:
            BackendClient(connection).health()
        except BackendError:
            return None
        self.pid = int(state["pid"]) if "pid" in state else None
        return Connection(connection.url, connection.token)

    def start(self) -> Connection:
        """Reuse a running service of this data dir, or spawn one and wait until its state file names it."""
        existing = self.running_connection()
        if existing is not None:
            self.connection = existing
            return existing
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.data_dir / LOG_NAME, "ab")
        try:
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0))
        except OSError as exc:
            raise BackendError(f"could not start the backend ({exc}); check the environment path in the preferences") from None
        finally:
            log.close()
        atexit.register(stop_started_backend)  # a backend this session started does not outlive it
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BackendError(self.start_failure(self.process.returncode))
            state = read_state_file(self.data_dir)
            if state is not None and state.get("pid") == self.process.pid:
                self.pid = self.process.pid
                self.connection = Connection(str(state["url"]), str(state.get("token", "")))
                return self.connection
            time.sleep(0.2)
        self.stop()
        raise BackendError(f"the backend did not start within {self.startup_timeout:.0f} s; see {self.data_dir / LOG_NAME}")

    def stop(self, timeout: float = 15.0) -> bool:
        """Stop the service (ours, or the one found in the state file) to free its GPU memory; True if one was stopped."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
            stopped = True
        elif self.process is None and self.pid is not None and self.running_connection() is not None:
            os.kill(self.pid, signal.SIGTERM)  # TerminateProcess on Windows
            stopped = True
        else:
            stopped = False
        self.process, self.connection, self.pid = None, None, None
        return stopped

    def start_failure(self, code: int) -> str:
        """What to tell the user when the process ended during start-up: the service's own message when it
        printed one (a missing model, a busy data dir), else the log and a hint at the environment."""
        tail = self.log_tail()
        said = [line for line in tail.splitlines() if line.startswith("scenewright serve: ")]
        if said:
            return f"the backend did not start: {said[-1][len('scenewright serve: '):]}"
        hint = ""
        if "No module named" in tail:
            hint = f"\nIs scenewright installed in {self.environment}?"
        return f"the backend exited during start-up (code {code}):\n{tail}{hint}"

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = (self.data_dir / LOG_NAME).read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


_lock = threading.Lock()
_backend: LocalBackend | None = None


def ensure_local_backend(environment: str, data_dir: str, model: str, device: str) -> Connection:
    """Auto-start on first use: the session's local backend, started (or adopted) once and reused."""
    global _backend
    with _lock:
        wanted = (environment, str(Path(os.path.expanduser(data_dir))), model, device)
        if _backend is None or (_backend.environment, str(_backend.data_dir), _backend.model, _backend.device) != wanted:
            if _backend is not None and _backend.process is not None:
                _backend.stop()  # the preferences changed: replace the backend this session started
            _backend = LocalBackend(environment, data_dir, model, device)
        if _backend.connection is not None:
            try:
                BackendClient(Connection(_backend.connection.url, _backend.connection.token, 3.0)).health()
                return _backend.connection
            except BackendNotRunning:
                _backend.connection = None
        return _backend.start()


def stop_started_backend() -> bool:
    """Stop the local backend only if this session started it (not one it found running); True if it did."""
    global _backend
    with _lock:
        if _backend is None or _backend.process is None:
            return False
        backend, _backend = _backend, None
        return backend.stop()


def stop_local_backend(data_dir: str) -> bool:
    """Stop the local backend serving `data_dir` (the session's, or one left running earlier)."""
    global _backend
    with _lock:
        backend = _backend if _backend is not None and _backend.data_dir == Path(os.path.expanduser(data_dir)) else None
        if backend is None:
            backend = LocalBackend("", data_dir)
            if backend.running_connection() is None:
                return False
        _backend = None
        return backend.stop()



@dataclass(frozen=True)
class BackendSettings:
    """How to reach the backend: a snapshot of the preferences, taken on the main thread, used in workers."""

    mode: str = "LOCAL"  # "LOCAL": a backend process on this machine; "REMOTE": a running service at `url`
    url: str = ""
    token: str = ""
    environment: str = ""
    data_dir: str = ""
    model: str = "default"
    device: str = "auto"
    auto_start: bool = True
    timeout: float = 10.0

    def connect(self) -> Connection:
        """The connection to use; starts the local backend on first use when auto-start is on (blocking)."""
        if self.mode == "REMOTE":
            if not self.url:
                raise BackendError("no backend URL set; enter it in the add-on preferences (e.g. http://127.0.0.1:8765)")
            return Connection(self.url, self.token, self.timeout)
        if self.auto_start:
            connection = ensure_local_backend(self.environment, self.data_dir, self.model, self.device)
        else:
            connection = LocalBackend(self.environment, self.data_dir).running_connection()
            if connection is None:
                raise BackendNotRunning("the local backend is not running; press Start Backend in the preferences "
                                        "or turn on auto-start")
        return Connection(connection.url, connection.token, self.timeout)
