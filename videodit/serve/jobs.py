"""Jobs and their store: one JSON record per job, written atomically to `<out>/jobs/<id>.json` at every
change of status, next to the finished `<out>/<id>.mp4` (and its `<id>.jpg` thumbnail).

A restart reads the records back: finished and failed jobs are kept as they were; jobs that were queued or
running when the last process stopped are queued again from their first step (`JobStore.requeued` says how
many), so nothing submitted is lost. Files a job owns (its uploads, its outputs) go when it is deleted.

The store is shared by the HTTP handlers and the batcher thread; every method holds one lock.
"""

from __future__ import annotations

import json
import os
import secrets
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from videodit.serve.spec import JobSpec

FINISHED = ("completed", "failed")


class QueueFull(Exception):
    """The store holds its limit of unfinished jobs."""


@dataclass
class Job:
    """A video job as the API reports it, plus its spec."""

    id: str
    spec: JobSpec
    created_at: int  # unix seconds
    seq: int  # creation order (ties in created_at)
    status: str = "queued"  # queued | in_progress | completed | failed
    progress: int = 0  # 0-100
    completed_at: int | None = None
    error: dict | None = None  # {"code": str, "message": str}
    version: int = 0  # bumped at every change, so that watchers see changes
    submitted: float = field(default_factory=time.time)  # float seconds: latency figures
    finished: float | None = None

    def record(self) -> dict:
        return {"id": self.id, "spec": self.spec.to_dict(), "created_at": self.created_at, "seq": self.seq,
                "status": self.status, "progress": self.progress, "completed_at": self.completed_at,
                "error": self.error, "submitted": self.submitted, "finished": self.finished}

    @classmethod
    def from_record(cls, data: dict) -> Job:
        return cls(id=data["id"], spec=JobSpec.from_dict(data["spec"]), created_at=int(data["created_at"]),
                   seq=int(data["seq"]), status=data["status"], progress=int(data["progress"]),
                   completed_at=data.get("completed_at"), error=data.get("error"),
                   submitted=float(data.get("submitted", data["created_at"])), finished=data.get("finished"))


def new_job_id() -> str:
    return f"video_{secrets.token_hex(12)}"


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary name in the same folder and os.replace."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class JobStore:
    """Jobs of one output folder; at most `max_queue` unfinished (queued or running) at a time."""

    def __init__(self, folder: Path, max_queue: int = 64):
        if max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {max_queue}")
        self.folder = Path(folder)
        self.max_queue = max_queue
        self.records = self.folder / "jobs"
        self.uploads = self.folder / "uploads"
        self.records.mkdir(parents=True, exist_ok=True)
        self.uploads.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Condition()
        self._jobs: dict[str, Job] = {}
        self.requeued, self.unreadable = self._load()

    # ---- paths
    def video_path(self, job_id: str) -> Path:
        return self.folder / f"{job_id}.mp4"

    def thumbnail_path(self, job_id: str) -> Path:
        return self.folder / f"{job_id}.jpg"

    def upload_path(self, job_id: str, key: str, suffix: str) -> Path:
        return self.uploads / f"{job_id}-{key}{suffix}"

    # ---- reading
    def get(self, job_id: str) -> Job | None:
        """A copy of the job (safe to read while the batcher changes it), or None."""
        with self._lock:
            job = self._jobs.get(job_id)
            return None if job is None else replace(job)

    def ordered(self) -> list[Job]:
        """Copies of every job, oldest first."""
        with self._lock:
            return [replace(j) for j in sorted(self._jobs.values(), key=lambda j: j.seq)]

    def page(self, after: str | None, limit: int, order: str) -> tuple[list[Job], bool]:
        """Jobs after the one with id `after` in `order` ("asc": oldest first, "desc"), at most `limit`
        -> (jobs, whether more follow). ValueError for an unknown `after`."""
        jobs = self.ordered()
        if order == "desc":
            jobs.reverse()
        if after is not None:
            ids = [j.id for j in jobs]
            if after not in ids:
                raise ValueError(f"after {after!r} is not a video of this server")
            jobs = jobs[ids.index(after) + 1:]
        return jobs[:limit], len(jobs) > limit

    def queued(self) -> list[Job]:
        """Copies of the queued jobs in the order they run (first submitted first)."""
        with self._lock:
            queued = [j for j in self._jobs.values() if j.status == "queued"]
            return [replace(j) for j in sorted(queued, key=lambda j: j.seq)]

    def queue_positions(self) -> dict[str, int]:
        """{id: jobs queued ahead of it (0: it starts next)} for every queued job."""
        return {j.id: i for i, j in enumerate(self.queued())}

    def unfinished(self) -> int:
        with self._lock:
            return sum(j.status not in FINISHED for j in self._jobs.values())

    # ---- changing
    def add(self, job_id: str, spec: JobSpec) -> Job:
        """A new queued job; QueueFull when `max_queue` jobs are unfinished."""
        with self._lock:
            if self.unfinished() >= self.max_queue:
                raise QueueFull(f"the queue is full ({self.max_queue} jobs queued or running); retry later")
            now = time.time()
            seq = max((j.seq for j in self._jobs.values()), default=-1) + 1
            job = Job(id=job_id, spec=spec, created_at=int(now), seq=seq, submitted=now)
            self._jobs[job_id] = job
            self._save(job)
            self._lock.notify_all()
            return replace(job)

    def start(self, job_id: str) -> bool:
        """queued -> in_progress; False when the job is gone (deleted) or not queued."""
        return self._update(job_id, "queued", status="in_progress", progress=0)

    def set_progress(self, job_id: str, progress: int) -> None:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is not None and job.status == "in_progress" and job.progress != progress:
                job.progress = progress
                job.version += 1

    def complete(self, job_id: str) -> bool:
        """in_progress -> completed (its mp4 is in place); False when the job was deleted meanwhile."""
        now = time.time()
        return self._update(job_id, "in_progress", status="completed", progress=100, completed_at=int(now),
                            finished=now)

    def fail(self, job_id: str, code: str, message: str) -> bool:
        now = time.time()
        return self._update(job_id, None, status="failed", completed_at=int(now), finished=now,
                            error={"code": code, "message": message})

    def delete(self, job_id: str) -> Job | None:
        """Remove a job (a running one stops at the next step) and its files -> the job, or None."""
        with self._lock:
            job = self._jobs.pop(job_id, None)
            if job is None:
                return None
            job.version += 1
            self._lock.notify_all()
        self.remove_files(job_id)
        return job

    def remove_files(self, job_id: str) -> None:
        paths = [self.records / f"{job_id}.json", self.video_path(job_id), self.thumbnail_path(job_id),
                 *self.uploads.glob(f"{job_id}-*")]
        for path in paths:
            path.unlink(missing_ok=True)

    def wait(self, timeout: float) -> None:
        """Block until some job changes or `timeout` seconds pass (the batcher's idle wait)."""
        with self._lock:
            self._lock.wait(timeout)

    def exists(self, job_id: str) -> bool:
        with self._lock:
            return job_id in self._jobs

    # ---- internals
    def _update(self, job_id: str, expect: str | None, **changes) -> bool:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or (expect is not None and job.status != expect):
                return False
            for key, value in changes.items():
                setattr(job, key, value)
            job.version += 1
            self._save(job)
            self._lock.notify_all()
            return True

    def _save(self, job: Job) -> None:
        write_atomic(self.records / f"{job.id}.json", json.dumps(job.record()).encode())

    def _load(self) -> tuple[int, list[str]]:
        """Read the records back -> (jobs queued again, record files that could not be read)."""
        requeued, unreadable = 0, []
        for path in sorted(self.records.glob("*.json")):
            try:
                job = Job.from_record(json.loads(path.read_text()))
            except (OSError, ValueError, KeyError, TypeError) as e:
                unreadable.append(f"{path.name}: {e}")
                continue
            if job.status == "completed" and not self.video_path(job.id).is_file():
                job.status = "failed"
                job.error = {"code": "output_missing", "message": f"{job.id}.mp4 is gone from {self.folder}"}
                self._save(job)
            elif job.status not in FINISHED:
                job.status, job.progress = "queued", 0
                requeued += 1
                self._save(job)
            self._jobs[job.id] = job
        for folder in (self.folder, self.records, self.uploads):  # partial files of a process that stopped
            for tmp in [*folder.glob(".*.tmp"), *folder.glob(".*.partial.mp4")]:  # mid-write
                tmp.unlink(missing_ok=True)
        return requeued, unreadable
