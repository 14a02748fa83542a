"""A job on several processes: the worker launches it under `torchrun` and follows it from outside.

A job that asks for `nproc` processes (per node) and `nnodes` nodes trains with DistributedDataParallel
(models/distributed.py): the worker writes the job's settings to `<run dir>/launch.json` and runs

    python -m torch.distributed.run --nproc-per-node N [--standalone | --nnodes M --rdzv-...] \
        -m service.torchrun_job <run dir>/launch.json

Every rank runs the same trainer the worker runs in-process for a one-process job, on the same run
folder, so the job resumes from its last finished epoch as any other. The job's `batch_size` is the
global batch: each of the N x M ranks trains on batch_size / (N x M) rows, so a job's result does not
depend on how many processes ran it. Rank 0 appends its step and epoch reports to
`<run dir>/progress.jsonl` and its result to `result.json`; the worker reads them into the job's
progress and heartbeats meanwhile. Cancelling the job, a stopping worker or a job taken over ends
the whole process group (SIGTERM, then SIGKILL); a worker that dies takes torchrun with it.

With `nnodes` > 1 the claiming worker's torchrun hosts the rendezvous at the job's `rdzv_endpoint`
and the other nodes join by running the same command (logged by the worker, and in
`<run dir>/join.txt`) on a machine that sees the same run folder, corpus and checkpoint folder.
"""
from __future__ import annotations

import ctypes
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from models.config import DistillConfig, TrainConfig
from models.errors import RNNLMError, TrainingCancelled
from models.train import EpochReport, StepReport, TrainResult

log = logging.getLogger(__name__)

FOLLOW_S = 0.2          # how often the worker reads the progress file and checks for a cancel
TERMINATE_GRACE_S = 15  # after SIGTERM, how long the group has before SIGKILL
ERROR_TAIL = 800        # characters of torchrun's log quoted when a job fails without a message


@dataclass
class Launch:
    """What the ranks need: the trainer's settings (the per-rank batch) and, for distillation, the teacher."""
    type: str
    config: dict
    teacher: str | None = None
    distill: dict | None = None


def world_size(nproc: int, nnodes: int) -> int:
    return nproc * nnodes


def command(launch_file: Path, *, nproc: int, nnodes: int, job_id: str,
            rdzv_endpoint: str | None = None) -> list[str]:
    """The torchrun command line for this job (the same on every node)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc)]
    if nnodes == 1:
        cmd.append("--standalone")  # a rendezvous on a free local port
    else:
        cmd += ["--nnodes", str(nnodes), "--rdzv-backend", "c10d", "--rdzv-endpoint", str(rdzv_endpoint),
                "--rdzv-id", job_id]
    return cmd + ["-m", "service.torchrun_job", str(launch_file)]


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the worker that started it dies (Linux), so a killed
    worker leaves no ranks training behind it while another worker resumes the job."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _end_group(proc: subprocess.Popen) -> None:
    for sig, wait_s in ((signal.SIGTERM, TERMINATE_GRACE_S), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=wait_s)
            break
        except subprocess.TimeoutExpired:
            continue
    # ranks that outlived torchrun itself (same group)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _read_reports(path: Path, offset: int, run: Any) -> int:
    """Pass the complete lines after `offset` to the job's callbacks; returns the new offset."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return offset
    end = data.rfind(b"\n") + 1
    for line in data[:end].splitlines():
        report = json.loads(line)
        kind = report.pop("kind")
        if kind == "step":
            run.on_step(StepReport(**report))
        elif kind == "epoch":
            run.on_epoch(EpochReport(**report))
    return offset + end


def run(job_id: str, kind: str, cfg: TrainConfig, run_dir: Path, job_run: Any, *, nproc: int, nnodes: int = 1,
        rdzv_endpoint: str | None = None, teacher: str | None = None,
        distill: DistillConfig | None = None) -> TrainResult:
    """Train `cfg` (its batch_size global) on nproc x nnodes ranks; `job_run` gets the reports and is
    asked `should_stop()` as the in-process trainer would ask it."""
    size = world_size(nproc, nnodes)
    _check_room(nproc, cfg.device)
    if cfg.batch_size % size:
        raise ValueError(f"batch_size {cfg.batch_size} does not split over {size} processes")
    run_dir.mkdir(parents=True, exist_ok=True)
    per_rank = {**asdict(cfg), "batch_size": cfg.batch_size // size}
    launch = Launch(kind, per_rank, teacher, asdict(distill) if distill else None)
    launch_file, progress, result_file = run_dir / "launch.json", run_dir / "progress.jsonl", run_dir / "result.json"
    launch_file.write_text(json.dumps(asdict(launch), indent=1), encoding="utf-8")
    for stale in (progress, result_file, *run_dir.glob("error-*.txt")):
        stale.unlink(missing_ok=True)  # an earlier attempt's
    cmd = command(launch_file, nproc=nproc, nnodes=nnodes, job_id=job_id, rdzv_endpoint=rdzv_endpoint)
    if nnodes > 1:
        joined = " ".join(shlex.quote(c) for c in cmd)
        (run_dir / "join.txt").write_text(joined + "\n", encoding="utf-8")
        log.info("job %s: waiting for %d more node(s); run on each: %s", job_id, nnodes - 1, joined)
    env = dict(os.environ)
    if _on_cuda(cfg.device):
        env.setdefault("RNNLM_DIST_BACKEND", "nccl")
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONUNBUFFERED"] = "1"
    with open(run_dir / "torchrun.log", "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True, preexec_fn=_die_with_parent)
    log.info("job %s: %d processes under torchrun (pid %d)", job_id, size, proc.pid)
    offset = 0
    try:
        while proc.poll() is None:
            offset = _read_reports(progress, offset, job_run)
            if job_run.should_stop():
                raise TrainingCancelled("stopped")
            time.sleep(FOLLOW_S)
        _read_reports(progress, offset, job_run)
    finally:
        if proc.poll() is None:
            _end_group(proc)
    if proc.returncode != 0 or not result_file.exists():
        raise RNNLMError(_failure(run_dir, proc.returncode))
    result = json.loads(result_file.read_text(encoding="utf-8"))
    return TrainResult(**{**result, "out": Path(result["out"])})


def _on_cuda(device: str) -> bool:
    import torch
    return device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())


def _check_room(nproc: int, device: str) -> None:
    """One process per core (per GPU on CUDA) on this machine: more would only slow the job and the box."""
    if _on_cuda(device):
        import torch
        have, what = torch.cuda.device_count(), "CUDA devices"
        if have == 0:
            return  # the ranks report the missing GPU in the trainer's own words
    else:
        have, what = len(os.sched_getaffinity(0)), "CPUs"
    if nproc > have:
        raise ValueError(f"nproc {nproc} is more than this worker's {have} {what}")


def _failure(run_dir: Path, returncode: int | None) -> str:
    for path in sorted(run_dir.glob("error-*.txt")):  # a rank's own message (rank 0's first)
        return path.read_text(encoding="utf-8").strip()
    try:
        tail = (run_dir / "torchrun.log").read_text(encoding="utf-8", errors="replace")[-ERROR_TAIL:]
    except OSError:
        tail = ""
    lines = [line for line in tail.splitlines() if line.strip()]
    return f"torchrun exited with status {returncode}" + (f": {lines[-1].strip()}" if lines else "")


# ---- in each rank -----------------------------------------------------------------------------------
def _report(path: Path, kind: str, report: Any) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps({"kind": kind, **asdict(report)}) + "\n")


def main(argv: list[str] | None = None) -> int:
    import torch.distributed as dist

    launch_file = Path((argv or sys.argv[1:])[0])
    run_dir = launch_file.parent
    launch = Launch(**json.loads(launch_file.read_text(encoding="utf-8")))
    rank = int(os.environ.get("RANK", "0"))
    cfg = TrainConfig(**{f.name: launch.config[f.name] for f in fields(TrainConfig) if f.name in launch.config})
    progress = run_dir / "progress.jsonl"
    main_rank = rank == 0
    kwargs: dict[str, Any] = dict(resume=True, overwrite=True, progress=False,
                                  on_step=(lambda r: _report(progress, "step", r)) if main_rank else None,
                                  on_epoch=(lambda r: _report(progress, "epoch", r)) if main_rank else None)
    try:
        if launch.type == "distill":
            from models.distill import distill
            result = distill(cfg, teacher=launch.teacher, settings=DistillConfig(**launch.distill), **kwargs)
        else:
            from models.train import train
            result = train(cfg, **kwargs)
    except Exception as exc:
        text = " ".join(str(exc).split()) or type(exc).__name__
        if not isinstance(exc, (RNNLMError, ValueError, OSError)):
            text = f"{type(exc).__name__}: {text}"
        (run_dir / f"error-{rank}.txt").write_text(text + "\n", encoding="utf-8")
        raise
    if main_rank:
        tmp = run_dir / "result.json.tmp"
        tmp.write_text(json.dumps({**asdict(result), "out": str(result.out)}), encoding="utf-8")
        tmp.replace(run_dir / "result.json")
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
