"""The training worker: claims jobs from the job store and runs the trainer, never in a request.

A job trains into its own run folder (`<jobs db dir>/runs/<job id>`: resumable run state plus
the model being built) and the finished model is copied into the checkpoint dir atomically only
when the job succeeds, where the API's registry watcher picks it up. So a served model is never
replaced by a half-trained or cancelled one, and a job whose worker died resumes from its last
finished epoch when a worker claims it again. Under an existing name the model becomes a new
version, served only if it passes the promotion gate (models/versions.py).
"""
from __future__ import annotations

import logging
import math
import os
import shutil
import signal
import socket
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge, start_http_server

from models.data import check_corpus_within, resolve_within, sha256, split_path
from models.errors import CheckpointError, RNNLMError, TrainingCancelled
from models.train import EpochReport, StepReport, TrainResult
from models.versions import current_folder, publish
from service.jobs import Job, JobStore
from service.metrics import JobCounts
from service.schemas import JobRequest
from service.settings import Settings

log = logging.getLogger(__name__)

CANCEL_CHECK_S = 1.0  # how often the training loop looks at the database between steps

JOBS_FINISHED = Counter("rnnlm_worker_jobs", "Jobs this worker ended, by type and outcome "
                        "(succeeded, failed, cancelled, released: handed back on shutdown, lost: taken over)",
                        ["type", "outcome"])
TRAINING_EPOCH = Gauge("rnnlm_training_epoch", "Last finished epoch of the current or last job", ["type"])
TRAINING_LOSS = Gauge("rnnlm_training_loss", "Mean training loss of the last epoch (nats per token)", ["type"])
TRAINING_TOKENS_PER_SECOND = Gauge("rnnlm_training_tokens_per_second", "Training throughput of the last epoch",
                                   ["type"])
TRAINING_VALID_PERPLEXITY = Gauge("rnnlm_training_valid_perplexity", "Validation perplexity after the last epoch",
                                  ["type"])
VERSIONS_PUBLISHED = Counter("rnnlm_model_versions_published", "Models this worker's jobs published, by whether "
                             "the promotion gate let them be served", ["promoted"])


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if isinstance(exc, (RNNLMError, ValueError, OSError)) else f"{type(exc).__name__}: {text}"


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


class JobRun:
    """One attempt at one job: the trainer's callbacks, and a heartbeat thread for the slow parts
    (evaluation, saving) where the trainer calls nothing back."""

    def __init__(self, worker: Worker, job: Job) -> None:
        self.worker, self.job, self.store = worker, job, worker.store
        self.lost = threading.Event()       # the job was taken over by another worker
        self.cancelled = False              # the user asked to cancel
        # the job's progress (see JobProgress); a resumed job starts from what its last attempt recorded
        self.progress: dict[str, Any] = dict(job.progress or {})
        self._reported = False
        self._last_check = 0.0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"rnnlm-heartbeat-{job.id[:8]}", daemon=True)

    def __enter__(self) -> JobRun:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(timeout=10)

    def _beat(self) -> None:
        while not self._done.wait(self.worker.heartbeat_s):
            self._heartbeat()

    def _heartbeat(self, progress: dict[str, Any] | None = None) -> None:
        try:
            beat = self.store.heartbeat(self.job.id, self.worker.id, progress)
        except Exception as exc:  # a locked or vanished database: try again on the next beat
            log.warning("job %s: heartbeat failed: %s", self.job.id, exc)
            return
        if not beat.owned and not self.lost.is_set():
            log.warning("job %s was taken over by another worker (missed heartbeats); dropping it", self.job.id)
            self.lost.set()
        if beat.cancel_requested:
            self.cancelled = True

    def should_stop(self) -> bool:
        """Called by the trainer before every step: cheap, touches the database at most once a second."""
        now = time.monotonic()
        if now - self._last_check >= CANCEL_CHECK_S:
            self._last_check = now
            self.worker.check_parent()
            self._heartbeat(self.progress or None)
        return self.cancelled or self.lost.is_set() or self.worker.stopping

    def on_step(self, report: StepReport) -> None:
        """Progress within an epoch; stored with the next heartbeat (the first one at once)."""
        self.progress.update({
            "epoch": report.epoch - 1, "epochs": report.epochs, "step": report.step,
            "total_steps": report.total_steps, "epoch_step": report.epoch_step, "epoch_steps": report.epoch_steps,
            "loss": _finite(report.loss), "tokens_per_s": _finite(report.tokens_per_s),
            "eta_s": _finite(report.eta_s), "lr": report.lr,
            "resumed_from_epoch": report.start_epoch - 1, "attempt": self.job.attempts,
        })
        if not self._reported:
            self._reported = True
            self._heartbeat(self.progress)

    def on_epoch(self, report: EpochReport) -> None:
        history = [{"epoch": h["epoch"], "train_loss": _finite(h["train_loss"]), "valid_ppl": _finite(h["valid_ppl"])}
                   for h in report.history or []]
        self.progress.update({
            "epoch": report.epoch, "epochs": report.epochs, "step": report.step, "total_steps": report.total_steps,
            "epoch_step": None, "epoch_steps": None, "loss": _finite(report.loss),
            "valid_ppl": _finite(report.valid_ppl), "best_valid_ppl": _finite(report.best_valid_ppl),
            "tokens_per_s": _finite(report.tokens_per_s), "eta_s": _finite(report.eta_s), "lr": report.lr,
            "history": history, "resumed_from_epoch": report.start_epoch - 1, "attempt": self.job.attempts,
        })
        self._heartbeat(self.progress)
        kind = self.job.type
        TRAINING_EPOCH.labels(kind).set(report.epoch)
        TRAINING_LOSS.labels(kind).set(report.loss)
        TRAINING_TOKENS_PER_SECOND.labels(kind).set(report.tokens_per_s)
        if report.valid_ppl is not None:
            TRAINING_VALID_PERPLEXITY.labels(kind).set(report.valid_ppl)
        vp = f"{report.valid_ppl:.2f}" if report.valid_ppl is not None else "n/a"
        log.info("job %s (%s %s): epoch %d/%d, train loss %.3f, valid ppl %s, %.0f tok/s", self.job.id, kind,
                 self.job.name, report.epoch, report.epochs, report.loss, vp, report.tokens_per_s)


class Worker:
    """Claims jobs one at a time until stopped (SIGTERM/SIGINT set `stop_event`)."""

    def __init__(self, store: JobStore, checkpoints: str | Path, *, poll_interval_s: float = 1.0,
                 worker_id: str | None = None, heartbeat_s: float | None = None,
                 data_roots: Sequence[str | Path] = (),
                 parent_pid: int | None = None, device: str = "auto", runs_dir: str | Path | None = None) -> None:
        self.store = store
        self.checkpoints = Path(checkpoints)
        # running jobs' resumable state: a folder every worker reaches (beside a SQLite store by default)
        self.runs_dir = Path(runs_dir or store.runs_dir or self.checkpoints.resolve().parent / "runs").resolve()
        self.poll_interval_s = poll_interval_s
        self.id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        # beat often enough that a live worker is never taken for dead
        self.heartbeat_s = heartbeat_s or max(0.2, min(10.0, store.stale_after_s / 4))
        self.parent_pid = parent_pid
        self.data_roots = list(data_roots)  # where a job's corpus files may resolve to (none: its own folder)
        self.device = device  # for jobs that leave theirs at "auto" (RNNLM_DEVICE, --device)
        self.stop_event = threading.Event()

    @property
    def stopping(self) -> bool:
        return self.stop_event.is_set()

    def stop(self) -> None:
        self.stop_event.set()

    def check_parent(self) -> None:
        """Started by `rnnlm serve --with-worker`: stop when that server is gone."""
        if self.parent_pid is not None and os.getppid() != self.parent_pid:
            if not self.stopping:
                log.warning("parent process %d is gone; stopping", self.parent_pid)
            self.stop()

    def run(self, once: bool = False) -> int:
        """Process jobs until stopped (or, with `once`, at most one job); returns how many were taken."""
        log.info("worker %s: jobs from %s, models to %s", self.id, self.store, self.checkpoints)
        taken = 0
        while not self.stopping:
            self.check_parent()
            try:
                job = self.store.claim(self.id)
            except Exception as exc:  # e.g. database locked for longer than the busy timeout
                log.warning("cannot claim a job: %s", exc)
                job = None
            if job is None:
                if once:
                    break
                self.stop_event.wait(self.poll_interval_s)
                continue
            taken += 1
            try:
                self.run_job(job)
            except Exception:  # the database failed us mid-job: the job is recovered once it goes stale
                log.exception("job %s: could not record its outcome", job.id)
            if once:
                break
        return taken

    def run_job(self, job: Job) -> str:
        """Run one claimed job to an outcome: succeeded, failed, cancelled, released or lost."""
        run_dir = Path(job.run_dir) if job.run_dir else self.runs_dir / job.id
        if not job.run_dir:
            self.store.set_run_dir(job.id, self.id, str(run_dir))
        resumed = " (resuming)" if (run_dir / "state" / "state.pt").exists() else ""
        log.info("job %s: %s %r, attempt %d%s", job.id, job.type, job.name, job.attempts, resumed)
        result, error, interrupted = None, None, False
        with JobRun(self, job) as run:  # heartbeats until the trainer returns
            try:
                result = self._execute(job, run_dir, run)
            except TrainingCancelled:
                interrupted = True
            except Exception as exc:
                if not isinstance(exc, RNNLMError | ValueError | OSError):
                    log.exception("job %s: unexpected error", job.id)
                error = one_line(exc)
            except BaseException:
                self.store.release(job.id, self.id)  # e.g. KeyboardInterrupt: leave it to resume
                raise
        if interrupted:
            outcome = self._interrupted(job, run)
        elif error is not None:
            outcome = self._end(job, run, "failed", error=error)
        else:
            outcome = self._end(job, run, "succeeded", result=result)
        if outcome in ("succeeded", "failed", "cancelled"):
            shutil.rmtree(run_dir, ignore_errors=True)  # nothing left to resume
        JOBS_FINISHED.labels(job.type, outcome).inc()
        log.info("job %s: %s", job.id, outcome)
        return outcome

    def _interrupted(self, job: Job, run: JobRun) -> str:
        if run.lost.is_set():
            return "lost"
        if run.cancelled:
            return self._end(job, run, "cancelled")
        if self.store.release(job.id, self.id):
            return "released"
        return "lost"

    def _end(self, job: Job, run: JobRun, status: str, *, result: dict | None = None, error: str | None = None) -> str:
        if run.lost.is_set() or not self.store.finish(job.id, self.id, status, result=result, error=error):
            log.warning("job %s: finished as %s but was no longer ours; not recorded", job.id, status)
            return "lost"
        if error:
            log.warning("job %s failed: %s", job.id, error)
        return status

    def _execute(self, job: Job, run_dir: Path, run: JobRun) -> dict[str, Any]:
        request = JobRequest.model_validate({**job.params, "type": job.type, "name": job.name})
        # What the job reads and writes stays inside its folders, symlinks followed (one planted since the
        # job was submitted included): a DataError fails the job before anything is read.
        check_corpus_within(request.data, self.data_roots or [request.data])
        resolve_within(run_dir, [self.runs_dir], "the job runs folder")
        target = self.checkpoints / job.name
        resolve_within(target, [self.checkpoints], "the checkpoint folder")
        overwrite = request.overwrite
        if target.exists() and not overwrite:
            raise CheckpointError(f"model {job.name!r} already exists in {self.checkpoints}; "
                                  "submit with overwrite=true to add a new version of it")
        cfg = request.to_train_config(out=run_dir / "out" / job.name, run_dir=run_dir / "state",
                                      checkpoints=self.checkpoints)
        if cfg.device == "auto":
            cfg.device = self.device  # a device the worker lacks fails the job with models.device's message
        if request.init:  # the version of it being served
            cfg = replace(cfg, init=str(current_folder(self.checkpoints / request.init)))
        # The staging folder belongs to this job alone: always resumable, always overwritable.
        kwargs = dict(resume=True, overwrite=True, on_epoch=run.on_epoch, on_step=run.on_step,
                      should_stop=run.should_stop, progress=False)
        result: TrainResult
        if request.nproc * request.nnodes > 1:  # under torchrun, followed from here (service/torchrun_job.py)
            from service import torchrun_job
            teacher = str(current_folder(self.checkpoints / request.teacher)) if job.type == "distill" else None
            result = torchrun_job.run(job.id, job.type, cfg, run_dir, run, nproc=request.nproc, nnodes=request.nnodes,
                                      rdzv_endpoint=request.rdzv_endpoint, teacher=teacher,
                                      distill=request.to_distill_config() if teacher else None)
        elif job.type == "distill":
            from models.distill import distill
            result = distill(cfg, teacher=str(current_folder(self.checkpoints / request.teacher)),
                             settings=request.to_distill_config(), **kwargs)
        else:
            from models.train import train
            result = train(cfg, **kwargs)
        if run.lost.is_set():
            raise TrainingCancelled("taken over by another worker")
        if target.exists() and not overwrite:  # shipped while this job was training
            raise CheckpointError(f"model {job.name!r} appeared in {self.checkpoints} while training; "
                                  "submit with overwrite=true to add a new version of it")
        valid = split_path(Path(request.data), "valid")
        source = {"job": job.id, "type": job.type, "valid_sha256": sha256(valid) if valid.is_file() else None}
        # atomically, as a new version when the name exists: the registry never sees half a model
        published = publish(target, result.out, source)
        VERSIONS_PUBLISHED.labels(str(published.promoted).lower()).inc()
        log.info("job %s: %r version %d %s: %s", job.id, job.name, published.version,
                 "promoted" if published.promoted else "kept, not promoted", published.reason)
        return {"model": job.name, "epochs_run": result.epochs_run, "seconds": round(result.seconds, 2),
                "valid_ppl": _finite(result.valid_ppl), "test_ppl": _finite(result.test_ppl),
                "parameters": result.parameters, "version": published.version, "promoted": published.promoted,
                "promotion": published.reason}


def run_worker(settings: Settings, *, once: bool = False, metrics_host: str = "127.0.0.1",
               parent_pid: int | None = None, worker_id: str | None = None) -> int:
    """`rnnlm worker`: claim and run jobs until SIGTERM/SIGINT, which hand the running job back to the queue."""
    store = JobStore(settings.jobs_db, stale_after_s=settings.job_stale_after_s)
    worker = Worker(store, settings.checkpoints, data_roots=settings.job_data_roots, worker_id=worker_id,
                    poll_interval_s=settings.worker_poll_interval_s,
                    parent_pid=parent_pid, device=settings.device, runs_dir=settings.job_runs_dir)

    def on_signal(signum: int, frame: object) -> None:
        log.info("worker %s: %s received, stopping after the current step", worker.id, signal.Signals(signum).name)
        worker.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if settings.worker_metrics_port:
        REGISTRY.register(JobCounts(store))
        start_http_server(settings.worker_metrics_port, addr=metrics_host)
        log.info("worker metrics on http://%s:%d/metrics", metrics_host, settings.worker_metrics_port)
    worker.run(once=once)
    return 0
