"""`scenewright serve`: bind a local socket, announce it in <data-dir>/service.json, serve until stopped.

The state file is written only once the socket is bound (so `--port 0` can
report the real port) and removed again on a clean shutdown; clients such as
the Blender add-on read the URL and token from it.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import logging
import os
import secrets
import signal
import socket
import sys
import time
from pathlib import Path

from ..protocol import PROTOCOL_VERSION, STATE_FILE_NAME, TOKEN_ENV_VAR, default_data_dir
from .storage import DEFAULT_KEEP_JOBS


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more: with 0, every result would be deleted as soon as "
                                         "its job finished, before a client could fetch it")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scenewright serve", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8765, help="TCP port; 0 picks a free one (see service.json)")
    parser.add_argument("--model", default="default",
                        help="'default' (shipped), a model folder, or a hub repo id such as VAST-AI/MIDI-3D")
    parser.add_argument("--device", default="auto", choices=("auto", "cuda", "mps", "cpu"))
    parser.add_argument("--dtype", default=None, choices=("fp32", "fp16", "bf16"), help="default: bf16 on CUDA, else fp32")
    parser.add_argument("--data-dir", type=Path, default=None, help=f"jobs and {STATE_FILE_NAME} (default: {default_data_dir()})")
    parser.add_argument("--allow-host", action="append", default=[], metavar="NAME[:PORT]",
                        help="also accept this Host header (repeatable): the machine's name for remote clients, "
                             "or an SSH tunnel's local end; loopback names are always accepted")
    parser.add_argument("--token", default=None, help=f"access token (default: ${TOKEN_ENV_VAR}, else a new random one)")
    parser.add_argument("--keep-jobs", type=_positive, default=DEFAULT_KEEP_JOBS, metavar="N",
                        help=f"finished jobs whose folders are kept; older ones are deleted (default {DEFAULT_KEEP_JOBS})")
    return parser


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (used to tell a live service from a stale state file)."""
    if pid <= 0:
        return False
    if sys.platform == "win32":
        handle = ctypes.windll.kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return False
        code = ctypes.c_ulong()
        ctypes.windll.kernel32.GetExitCodeProcess(handle, ctypes.byref(code))
        ctypes.windll.kernel32.CloseHandle(handle)
        return code.value == 259  # STILL_ACTIVE
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def running_service(data_dir: Path) -> dict | None:
    """The state of another live service using this data dir, if any."""
    try:
        state = json.loads((data_dir / STATE_FILE_NAME).read_text("utf-8"))
    except (OSError, ValueError):
        return None
    pid = state.get("pid") if isinstance(state, dict) else None
    if isinstance(pid, int) and pid != os.getpid() and pid_alive(pid):
        return state
    return None


def make_private(data_dir: Path) -> None:
    """Uploads and results are the user's pictures and scenes: everything this process creates is readable by
    the user only (umask 077), and a data dir left by an older version is made so too."""
    if sys.platform == "win32":  # per-user folders by default; POSIX modes do not apply
        data_dir.mkdir(parents=True, exist_ok=True)
        return
    from .storage import JOB_ID_PATTERN, JobStore

    os.umask(0o077)
    data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(data_dir, 0o700)
    jobs = JobStore(data_dir).jobs_dir
    if not jobs.is_dir():
        return
    os.chmod(jobs, 0o700)
    for folder in jobs.iterdir():  # only what the service made: job folders and their files
        if JOB_ID_PATTERN.fullmatch(folder.name) and folder.is_dir() and not folder.is_symlink():
            os.chmod(folder, 0o700)
            for file in folder.iterdir():
                if file.is_file() and not file.is_symlink():
                    os.chmod(file, 0o600)


def write_state(path: Path, state: dict) -> None:
    """Write the state file readable by this user only: it holds the token."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(state, fh, indent=1)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    if sys.platform != "win32":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    return sock


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    data_dir = (args.data_dir or default_data_dir()).expanduser().resolve()
    make_private(data_dir)
    other = running_service(data_dir)
    if other is not None:
        print(f"scenewright serve: a service (pid {other['pid']}, {other.get('url')}) already uses {data_dir}; "
              "stop it or pass another --data-dir", file=sys.stderr)
        return 1

    import uvicorn

    from ..loading import ModelLoadError
    from .app import create_app
    from .auth import AccessPolicy
    from .model_manager import ModelManager, UnknownModel

    try:
        models = ModelManager(args.model, device=args.device, dtype=args.dtype)
    except (UnknownModel, ModelLoadError) as exc:
        print(f"scenewright serve: {exc}", file=sys.stderr)
        return 2
    try:
        sock = bind(args.host, args.port)
    except OSError as exc:
        print(f"scenewright serve: cannot listen on {args.host}:{args.port} ({exc}); try --port 0", file=sys.stderr)
        return 1
    port = sock.getsockname()[1]
    token = args.token or os.environ.get(TOKEN_ENV_VAR) or secrets.token_urlsafe(32)
    policy = AccessPolicy(token=token, bound_host=args.host, port=port, extra_hosts=tuple(args.allow_host))
    app = create_app(data_dir, models, policy, keep_jobs=args.keep_jobs)
    url_host = f"[{args.host}]" if ":" in args.host else args.host
    state_path = data_dir / STATE_FILE_NAME
    state = {"url": f"http://{url_host}:{port}", "pid": os.getpid(), "token": token,
             "protocol_version": PROTOCOL_VERSION, "started_at": time.time()}
    write_state(state_path, state)
    print(f"scenewright service on {state['url']} (model {models.default_id}, device {models.device}); "
          f"state file {state_path}", flush=True)
    # No access log: clients poll job status twice a second. No proxy headers: nothing sits in front of us.
    config = uvicorn.Config(app, log_level="info", access_log=False, proxy_headers=False, timeout_graceful_shutdown=30)
    server = uvicorn.Server(config)
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-raises the signal; make both end here.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    finally:
        try:  # remove the state file only if it is still ours
            if json.loads(state_path.read_text("utf-8")).get("pid") == os.getpid():
                state_path.unlink()
        except (OSError, ValueError):
            pass
    return 0
