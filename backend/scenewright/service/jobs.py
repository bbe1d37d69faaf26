"""The job queue and its single GPU worker thread.

One worker, because one GPU runs one scene at a time; everything else (HTTP,
status reads) happens on other threads and only touches JobStatus objects
under a lock. Job state machine:

    queued -> running -> succeeded | failed | cancelled
    queued -> cancelled                      (cancelled before it started)

Every change is written to the job's status.json at once, so a restarted
service (see JobStore.fail_interrupted) knows what happened.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..export import export_result
from ..pipeline import EmptyResult, GenerationCancelled
from ..protocol import JobStatus
from .inputs import Submission
from .model_manager import ModelManager, is_out_of_memory, out_of_memory_message, release_memory
from .storage import DEFAULT_KEEP_JOBS, INTERRUPTED_MESSAGE, JobStore, interrupted_message, new_job_id

log = logging.getLogger("scenewright.service")


class JobConflict(RuntimeError):
    """The request does not fit the job's state (e.g. the result of a job that has not succeeded)."""


@dataclass
class _Job:
    status: JobStatus
    submission: Submission | None  # dropped once the job is finished, to free the decoded images
    cancel: threading.Event = field(default_factory=threading.Event)


class JobManager:
    """Queue + worker; the service's only way to start, follow and cancel jobs."""

    def __init__(self, store: JobStore, models: ModelManager, keep_jobs: int = DEFAULT_KEEP_JOBS) -> None:
        self.store = store
        self.models = models
        self.keep_jobs = keep_jobs  # finished job folders kept on disk; older ones are deleted
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._lock = threading.Lock()
        self._active: dict[str, _Job] = {}  # queued or running
        self._stopping = False
        self._thread: threading.Thread | None = None

    # ---- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Mark jobs of a dead process as failed, then start the worker."""
        for job_id in self.store.fail_interrupted():
            log.warning("job %s was interrupted by the previous service process; marked failed", job_id)
        self._prune()
        self._thread = threading.Thread(target=self._work, name="scenewright-gpu-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Clean shutdown: the running job stops at its next step; it and queued jobs end as failed (interrupted)."""
        with self._lock:
            self._stopping = True
            for job in self._active.values():
                job.cancel.set()
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout)
        with self._lock:
            for job in list(self._active.values()):
                self._finish(job, "failed", interrupted_message(job.status.state))

    # ---- requests -----------------------------------------------------------------------

    def submit(self, submission: Submission) -> JobStatus:
        status = JobStatus(
            job_id=new_job_id(), state="queued", stage="queued", message="waiting for the GPU worker",
            num_instances=len(submission.masks), settings=submission.settings.to_dict(), created_at=time.time(),
        )
        self.store.create(status, submission.files)
        with self._lock:
            self._active[status.job_id] = _Job(status, submission)
        self._queue.put(status.job_id)
        return self.get(status.job_id)

    def get(self, job_id: str) -> JobStatus:
        with self._lock:
            job = self._active.get(job_id)
            if job is not None:
                return JobStatus.from_dict(job.status.to_dict())
        return self.store.read_status(job_id)

    def list(self) -> list[JobStatus]:
        with self._lock:  # active jobs from memory: their status files are being rewritten
            live = [JobStatus.from_dict(job.status.to_dict()) for job in self._active.values()]
        stored = self.store.list_statuses(skip={s.job_id for s in live})
        return sorted(stored + live, key=lambda s: s.created_at, reverse=True)

    def cancel(self, job_id: str) -> JobStatus:
        """A queued job is cancelled at once; a running one stops before its next sampler step."""
        with self._lock:
            job = self._active.get(job_id)
            if job is None:
                state = self.store.read_status(job_id).state  # raises UnknownJob
                raise JobConflict(f"job {job_id} has already finished ({state}); there is nothing to cancel")
            job.cancel.set()
            if job.status.state == "queued":
                self._finish(job, "cancelled", "cancelled before it started")
            else:
                job.status.message = "cancelling: the job stops before its next step"
                self.store.write_status(job.status)
            return JobStatus.from_dict(job.status.to_dict())

    def result_path(self, job_id: str, name: str) -> Path:
        status = self.get(job_id)
        if status.state != "succeeded":
            raise JobConflict(f"job {job_id} is {status.state}; results exist only for succeeded jobs")
        path = self.store.result_path(job_id, name)
        if not path.is_file():
            raise JobConflict(f"the {name} of job {job_id} is missing from the data dir (deleted?); submit the job again")
        return path

    # ---- worker -------------------------------------------------------------------------

    def _finish(self, job: _Job, state: str, message: str) -> None:
        """Final state; caller holds self._lock."""
        job.status.state = state
        job.status.message = message
        job.status.stage = "done" if state == "succeeded" else job.status.stage
        job.status.finished_at = time.time()
        job.submission = None
        self.store.write_status(job.status)
        self._active.pop(job.status.job_id, None)

    def _prune(self) -> None:
        """Delete old finished job folders (reads every status file: called outside the lock)."""
        for job_id in self.store.prune(self.keep_jobs):
            log.info("deleted the folder of old job %s (keeping the newest %d finished jobs)", job_id, self.keep_jobs)

    def _update(self, job: _Job, **changes) -> None:
        with self._lock:
            for key, value in changes.items():
                setattr(job.status, key, value)
            self.store.write_status(job.status)

    def _work(self) -> None:
        while True:
            job_id = self._queue.get()
            if job_id is None or self._stopping:
                return
            with self._lock:  # look up and start in one step, so a cancel sees either queued or running
                job = self._active.get(job_id)
                if job is None:  # cancelled while queued
                    continue
                job.status.state, job.status.stage, job.status.message = "running", "preprocess", "loading the model"
                self.store.write_status(job.status)
            self._run(job)

    def _run(self, job: _Job) -> None:
        submission = job.submission
        assert submission is not None
        started = time.perf_counter()

        def progress(stage: str, step: int, total: int) -> None:
            self._update(job, stage=stage, step=step, total=total, message=f"{stage} {step}/{total}")

        try:
            with self.models.gpu_lock:
                pipe = self.models.pipeline(submission.settings.model)
                result = pipe.generate(
                    submission.image, submission.masks, submission.settings,
                    progress=progress, should_cancel=job.cancel.is_set,
                )
                self._update(job, stage="export", message="writing result.glb and result.json")
                export_result(result, self.store.job_dir(job.status.job_id), job.status.job_id, model=self.models.loaded)
            outcome = ("succeeded", f"{len(result.instances)} instances")
            job.status.timings = {**result.timings, "total": time.perf_counter() - started}
        except GenerationCancelled:
            outcome = ("failed", INTERRUPTED_MESSAGE) if self._stopping else ("cancelled", "cancelled by request")
        except EmptyResult as exc:
            outcome = ("failed", str(exc))
        except Exception as exc:  # a failing job must never take the worker down
            if is_out_of_memory(exc):
                release_memory()
                outcome = ("failed", out_of_memory_message(exc))
            else:
                log.exception("job %s failed", job.status.job_id)
                outcome = ("failed", f"generation failed: {type(exc).__name__}: {exc}")
        with self._lock:
            self._finish(job, *outcome)
        self._prune()

