"""Per-job folders under the data dir, so finished jobs outlive the process.

Layout: <data-dir>/jobs/<job_id>/ holds the uploaded inputs, status.json
(rewritten atomically on every change), result.glb and result.json. Job ids
are generated here and every id coming from a client is checked against a
strict pattern before it is joined to a path, so no id can address a file
outside the data dir.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import uuid
from pathlib import Path
from typing import Collection

from ..files import write_atomic
from ..protocol import FINISHED_STATES, JOB_STATES, JobStatus

JOB_ID_PATTERN = re.compile(r"^[0-9a-f]{32}$")
STATUS_FILE = "status.json"
RESULT_GLB = "result.glb"
RESULT_JSON = "result.json"
INTERRUPTED_MESSAGE = "the service stopped while this job was running; submit it again"
NEVER_STARTED_MESSAGE = "the service stopped before this job started; submit it again"


def interrupted_message(state: str) -> str:
    """Why a job that the service's end caught in `state` (queued or running) failed."""
    return NEVER_STARTED_MESSAGE if state == "queued" else INTERRUPTED_MESSAGE
DEFAULT_KEEP_JOBS = 100


class UnknownJob(KeyError):
    """No job with this id (or the id is malformed, which is reported the same way)."""


def _damaged(job_id: str, folder: Path, why: str) -> JobStatus:
    try:
        created = folder.stat().st_mtime
    except OSError:
        created = 0.0
    return JobStatus(job_id=job_id, state="failed", stage="done", created_at=created, finished_at=created,
                     message=f"the status file of this job is damaged ({why}); its result cannot be trusted: "
                             "submit the job again")


def new_job_id() -> str:
    return uuid.uuid4().hex


class JobStore:
    """Job folders on disk; the only code that turns a job id into a path."""

    def __init__(self, data_dir: Path) -> None:
        self.jobs_dir = Path(data_dir) / "jobs"

    def job_dir(self, job_id: str) -> Path:
        if not isinstance(job_id, str) or not JOB_ID_PATTERN.fullmatch(job_id):
            raise UnknownJob(job_id)
        return self.jobs_dir / job_id

    def create(self, status: JobStatus, inputs: dict[str, bytes]) -> None:
        """Make the job folder with its input files and first status (inputs are validated before)."""
        folder = self.job_dir(status.job_id)
        # filled under a name no job id matches, then renamed: no reader ever sees a folder without its status
        staging = folder.with_name(f".{status.job_id}.new")
        staging.mkdir(parents=True, exist_ok=False)
        for name, data in inputs.items():
            write_atomic(staging / name, data)
        write_atomic(staging / STATUS_FILE, json.dumps(status.to_dict(), indent=1).encode("utf-8"))
        os.rename(staging, folder)

    def write_status(self, status: JobStatus) -> None:
        write_atomic(self.job_dir(status.job_id) / STATUS_FILE, json.dumps(status.to_dict(), indent=1).encode("utf-8"))

    def read_status(self, job_id: str) -> JobStatus:
        """The stored status; a damaged file (a power cut mid-write, a disk error) reads as a failed job saying so."""
        folder = self.job_dir(job_id)
        path = folder / STATUS_FILE
        try:
            data = json.loads(path.read_text("utf-8"))
            status = JobStatus.from_dict(data)
            if status.job_id != job_id or status.state not in JOB_STATES:
                raise ValueError("it does not describe this job")
            return status
        except FileNotFoundError as exc:
            if folder.is_dir():
                return _damaged(job_id, folder, "it is missing")
            raise UnknownJob(job_id) from exc
        except (OSError, ValueError, TypeError, AttributeError) as exc:  # AttributeError: JSON that is not an object
            return _damaged(job_id, folder, str(exc) or type(exc).__name__)

    def result_path(self, job_id: str, name: str) -> Path:
        return self.job_dir(job_id) / name

    def list_statuses(self, skip: Collection[str] = ()) -> list[JobStatus]:
        """All readable jobs but those in `skip` (the caller knows them better), newest first."""
        if not self.jobs_dir.is_dir():
            return []
        out = []
        for entry in self.jobs_dir.iterdir():
            if entry.name in skip:
                continue
            if JOB_ID_PATTERN.fullmatch(entry.name) and entry.is_dir():
                out.append(self.read_status(entry.name))  # a damaged one reads as failed: listed, and pruned in turn
        out.sort(key=lambda s: s.created_at, reverse=True)
        return out

    def fail_interrupted(self) -> list[str]:
        """On start: jobs left queued/running by a dead process become failed, with the reason."""
        failed = []
        for status in self.list_statuses():
            if status.state in ("queued", "running"):
                status.message = interrupted_message(status.state)
                status.state = "failed"
                status.finished_at = time.time()
                self.write_status(status)
                failed.append(status.job_id)
        return failed

    def prune(self, keep: int) -> list[str]:
        """Delete the folders of finished jobs beyond the newest `keep` finished ones (queued and
        running jobs are never touched); returns the deleted ids, oldest last."""
        finished = [s for s in self.list_statuses() if s.state in FINISHED_STATES]
        removed = []
        for status in finished[max(keep, 0):]:
            shutil.rmtree(self.job_dir(status.job_id), ignore_errors=True)
            removed.append(status.job_id)
        return removed
