"""`rnnlm serve --with-worker`: the training worker as a supervised child process.

A thread waits on the child, so a dead worker is reaped at once (never a zombie). Its running job
is handed back to the queue under its worker id, and a new worker is started after a backoff that
doubles while workers keep dying young; the new one claims the job and resumes it from its last
finished epoch. `/ready` and the metrics say whether the worker is up.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable

from prometheus_client import Counter, Gauge

from service.jobs import JobStore

log = logging.getLogger(__name__)

WORKER_UP = Gauge("rnnlm_worker_up", "1 while the training worker of serve --with-worker runs, 0 while it is down")
WORKER_RESTARTS = Counter("rnnlm_worker_restarts", "Times serve --with-worker restarted its training worker after "
                                                   "it died")

BACKOFF_S = (0.5, 30.0)  # first and longest wait before a restart
HEALTHY_AFTER_S = 60.0   # a worker that ran this long resets the backoff


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}"


class WorkerSupervisor:
    """Start, watch, restart and stop one worker process; `command(worker_id)` is its command line."""

    def __init__(self, command: Callable[[str], list[str]], store: JobStore, *,
                 backoff_s: tuple[float, float] = BACKOFF_S, healthy_after_s: float = HEALTHY_AFTER_S) -> None:
        self.command = command
        self.store = store
        self.backoff_s = backoff_s
        self.healthy_after_s = healthy_after_s
        self.restarts = 0
        self.last_exit: str | None = None
        self._proc: subprocess.Popen | None = None
        self._worker_id: str | None = None
        self._started = 0.0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="rnnlm-worker-supervisor", daemon=True)

    # ---- state ---------------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    @property
    def up(self) -> bool:
        return self.pid is not None

    def state(self) -> dict:
        """For /ready: running (up), restarting (down, a new worker is on its way) or stopped."""
        status = "running" if self.up else ("stopped" if self._stopping.is_set() else "restarting")
        return {"status": status, "pid": self.pid, "restarts": self.restarts, "last_exit": self.last_exit}

    # ---- life ----------------------------------------------------------------------------------
    def start(self) -> None:
        self._spawn()
        self._thread.start()

    def _spawn(self) -> None:
        with self._lock:
            if self._stopping.is_set():
                return
            self._worker_id = f"{os.uname().nodename}-serve{os.getpid()}-{uuid.uuid4().hex[:6]}"
            self._proc = subprocess.Popen(self.command(self._worker_id))
            self._started = time.monotonic()
            WORKER_UP.set(1)
        log.info("training worker started (pid %d)", self._proc.pid)

    def _watch(self) -> None:
        delay = self.backoff_s[0]
        while not self._stopping.is_set():
            proc, worker_id = self._proc, self._worker_id
            if proc is not None and worker_id is not None:
                code = proc.wait()  # reaps it
                WORKER_UP.set(0)
                if self._stopping.is_set():
                    return
                self.last_exit = describe_exit(code)
                if time.monotonic() - self._started >= self.healthy_after_s:
                    delay = self.backoff_s[0]
                self._requeue(worker_id)
                log.warning("training worker (pid %d) %s; restarting it in %.1f s", proc.pid, self.last_exit, delay)
            if self._stopping.wait(delay):
                return
            self.restarts += 1
            WORKER_RESTARTS.inc()
            try:
                self._spawn()
            except OSError as exc:  # e.g. out of processes: try again after a longer wait
                log.error("cannot start the training worker: %s", exc)
                self._proc = None
            delay = min(delay * 2, self.backoff_s[1])

    def _requeue(self, worker_id: str) -> None:
        """Hand the dead worker's job back to the queue now, rather than once its heartbeat goes stale."""
        try:
            ids = self.store.requeue_worker(worker_id)
        except Exception as exc:  # the new worker's claim() recovers it once it is stale anyway
            log.warning("cannot re-queue the dead worker's job: %s", exc)
            return
        for job_id in ids:
            log.info("job %s handed back to the queue; the restarted worker resumes it", job_id)

    def stop(self, grace_s: float = 30.0) -> None:
        """SIGTERM (the worker hands its job back to the queue), then SIGKILL if it does not exit in time."""
        with self._lock:
            self._stopping.set()
            proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        WORKER_UP.set(0)

