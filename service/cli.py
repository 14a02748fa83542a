"""`rnnlm` command line: the library's commands (train, distill, eval, fit-boost, generate, from
`models.cli`) plus the service's: serve and worker.

Every expected failure (bad path, broken model, nonsense flag) prints one line on stderr and
exits non-zero; tracebacks are for bugs only.
"""
from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence

from models.cli import COMMANDS as LIBRARY_COMMANDS
from models.cli import (
    EXIT_ERROR,
    EXIT_USAGE,
    Command,
    OneLineParser,
    add_commands,
    add_device_flag,
    number,
    positive,
    run_command,
)

port = number(int, lambda v: 0 <= v <= 65535, "in [0, 65535]", "a port number")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="rnnlm", description="Recurrent language models: train, evaluate, serve.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    add_commands(sub)

    p = sub.add_parser("serve", help="serve the models of a checkpoint folder over HTTP",
                       description="Serve every model folder in --checkpoints over HTTP (one process; "
                                   "scale out with replicas). Flags override RNNLM_* environment settings.")
    p.add_argument("--host", default=None, help="address to bind (default 127.0.0.1; any other address "
                                                "needs an API key or --insecure)")
    p.add_argument("--port", type=port, default=None, help="default 8000")
    p.add_argument("--checkpoints", default=None, help="folder of model folders (default: checkpoints)")
    p.add_argument("--api-key", default=None, help="deprecated: other users see it in `ps`; use $RNNLM_API_KEY "
                                                   "or --api-key-file")
    p.add_argument("--api-key-file", default=None, help="require `Authorization: Bearer <key>` on protected routes, "
                                                        "the key read from this file (default: $RNNLM_API_KEY_FILE, "
                                                        "or the key in $RNNLM_API_KEY)")
    p.add_argument("--insecure", action="store_true", help="allow a non-loopback address without an API key")
    p.add_argument("--threads", type=positive(), default=None, help="torch threads of the server process "
                                                                    "(default: $RNNLM_THREADS, else one per core)")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info")
    p.add_argument("--jobs-db", default=None, help="the job store: a SQLite file (default: jobs.db) or a "
                                                   "postgresql:// URL")
    add_device_flag(p, default=None)
    p.add_argument("--with-worker", action="store_true",
                   help="also run a training worker process (same checkpoints and job database)")
    ray = p.add_argument_group("replicas on Ray Serve (pip install 'rnnlm-serve[ray]')")
    ray.add_argument("--ray", action="store_true", help="serve through Ray Serve's proxy with --replicas copies of "
                                                        "the app (a local one-node Ray cluster, or $RAY_ADDRESS)")
    ray.add_argument("--replicas", type=positive(), default=1, help="replicas (the minimum with --max-replicas)")
    ray.add_argument("--max-replicas", type=positive(), default=None,
                     help="autoscale up to this many replicas on queue depth")
    ray.add_argument("--replica-cpus", type=positive(float), default=1.0, help="CPUs Ray reserves per replica")
    ray.add_argument("--ray-address", default=None, help="a running Ray cluster (default: $RAY_ADDRESS, else a "
                                                         "local one started and stopped with the server)")
    ray.add_argument("--ray-metrics-dir", default=None, help="write a Prometheus file_sd target per replica here "
                                                             "(default: $RNNLM_RAY_METRICS_DIR)")

    p = sub.add_parser("worker", help="run the training and distillation jobs queued by POST /v1/jobs",
                       description="Claim queued jobs one at a time and train them; a finished model is copied "
                                   "into --checkpoints, where `rnnlm serve` picks it up. SIGTERM/SIGINT hand the "
                                   "running job back to the queue (it resumes from its last epoch). Flags "
                                   "override RNNLM_* environment settings.")
    p.add_argument("--checkpoints", default=None, help="where finished models go (default: checkpoints)")
    p.add_argument("--jobs-db", default=None, help="the job store: a SQLite file (default: jobs.db) or a "
                                                   "postgresql:// URL")
    p.add_argument("--runs-dir", default=None, help="where running jobs keep their resumable state, shared by "
                                                    "all workers (default: runs/ beside a SQLite store, or beside "
                                                    "--checkpoints with PostgreSQL)")
    p.add_argument("--poll-interval", type=positive(float), default=None,
                   help="seconds between looks at an empty queue (default 1)")
    p.add_argument("--stale-after", type=positive(float), default=None,
                   help="re-queue a running job whose worker sent no heartbeat for this many seconds (default 30)")
    p.add_argument("--metrics-port", type=port, default=None, help="Prometheus metrics port; 0 = off (default)")
    p.add_argument("--metrics-host", default="127.0.0.1", help="address of the metrics server")
    p.add_argument("--once", action="store_true", help="process at most one job (none if the queue is empty)")
    add_device_flag(p, default=None)
    p.add_argument("--threads", type=positive(), default=None, help="torch threads")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info")
    p.add_argument("--parent-pid", type=int, default=None, help=argparse.SUPPRESS)  # serve --with-worker
    p.add_argument("--worker-id", default=None, help=argparse.SUPPRESS)  # serve --with-worker
    return parser


def _settings(command: str, flags: dict):
    """Settings from the environment, overridden by the flags given; None (after one error line) if invalid."""
    from pydantic import ValidationError

    from service.settings import Settings

    try:
        return Settings(**{k: v for k, v in flags.items() if v is not None})
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        if not where:  # a rule across settings (the API key file)
            print(f"rnnlm {command}: error: {err['msg'].removeprefix('Value error, ')}", file=sys.stderr)
            return None
        print(f"rnnlm {command}: error: bad setting {where or '?'} (RNNLM_{where.upper()}): {err['msg']}",
              file=sys.stderr)
        return None


def _worker_command(settings, log_level: str):
    """The `--with-worker` subprocess' command line, given its worker id: same checkpoints and job database;
    it exits if this server dies."""
    import os

    parent = os.getpid()

    def command(worker_id: str) -> list[str]:
        cmd = [sys.executable, "-m", "service.cli", "worker", "--checkpoints", str(settings.checkpoints),
               "--jobs-db", str(settings.jobs_db), "--log-level", log_level, "--parent-pid", str(parent),
               "--worker-id", worker_id]
        if settings.threads:
            cmd += ["--threads", str(settings.threads)]
        cmd += ["--device", settings.device]
        return cmd
    return command


class _Terminated(Exception):
    """SIGTERM arrived (`rnnlm serve --with-worker` cleans up before exiting)."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise _Terminated


def cmd_serve(args: argparse.Namespace) -> int:
    import logging
    from pathlib import Path

    from service.settings import MIN_KEY_CHARS

    flags = {"host": args.host, "port": args.port, "checkpoints": args.checkpoints, "api_key": args.api_key,
             "api_key_file": args.api_key_file, "threads": args.threads, "jobs_db": args.jobs_db, "device": args.device}
    settings = _settings("serve", flags)
    if settings is None:
        return EXIT_USAGE
    if args.api_key is not None:
        print("rnnlm serve: warning: --api-key is deprecated: every user of this machine sees the key in `ps`; "
              "set RNNLM_API_KEY or use --api-key-file", file=sys.stderr)
    if not settings.loopback and settings.api_key is None and not args.insecure:
        print(f"rnnlm serve: error: refusing to bind {settings.host} without an API key; set RNNLM_API_KEY or "
              "pass --api-key-file FILE, or --insecure to allow it anyway", file=sys.stderr)
        return EXIT_USAGE
    if not settings.loopback and settings.api_key_is_placeholder:
        print(f"rnnlm serve: error: refusing to bind {settings.host} with a placeholder API key (an example value "
              f"or under {MIN_KEY_CHARS} characters); make one with: python3 -c \"import secrets; "
              "print(secrets.token_urlsafe(32))\"", file=sys.stderr)
        return EXIT_USAGE
    if not Path(settings.checkpoints).is_dir():
        print(f"rnnlm serve: error: no such checkpoint folder: {settings.checkpoints}", file=sys.stderr)
        return EXIT_ERROR

    if args.ray:
        return _serve_on_ray(settings, args)

    from service.app import create_app
    from service.server import serve

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(settings)
    supervisor, terminated, status = None, False, 0
    if args.with_worker:  # restarted with backoff if it dies; /ready and the metrics say whether it is up
        from service.supervisor import BACKOFF_S, WorkerSupervisor

        supervisor = WorkerSupervisor(_worker_command(settings, args.log_level), app.state.jobs,
                                      backoff_s=(settings.worker_restart_backoff_s, BACKOFF_S[1]))
        app.state.worker_supervisor = supervisor
        supervisor.start()
        # uvicorn re-raises SIGTERM after its graceful shutdown: turn it into an exception so that
        # the worker is stopped before this process goes.
        signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        status = serve(app, settings, args.log_level)  # uvicorn, with the request-read timeout
    except _Terminated:
        terminated = True
    finally:
        if supervisor is not None:
            supervisor.stop()
    if terminated:  # exit reporting the signal, as without a worker
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.raise_signal(signal.SIGTERM)
    return status


def _serve_on_ray(settings, args: argparse.Namespace) -> int:
    import importlib.util
    import logging
    import os

    if args.with_worker:
        print("rnnlm serve: error: --with-worker runs beside one process; with --ray run `rnnlm worker` on its own",
              file=sys.stderr)
        return EXIT_USAGE
    if args.max_replicas is not None and args.max_replicas < args.replicas:
        print("rnnlm serve: error: --max-replicas must be at least --replicas", file=sys.stderr)
        return EXIT_USAGE
    if importlib.util.find_spec("ray") is None:
        print("rnnlm serve: error: --ray needs Ray Serve: pip install 'rnnlm-serve[ray]'", file=sys.stderr)
        return EXIT_ERROR
    from service import ray_serve

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return ray_serve.run(settings, replicas=args.replicas, max_replicas=args.max_replicas, address=args.ray_address,
                         num_cpus=args.replica_cpus,
                         metrics_dir=args.ray_metrics_dir or os.environ.get("RNNLM_RAY_METRICS_DIR"))


def cmd_worker(args: argparse.Namespace) -> int:
    import logging

    flags = {"checkpoints": args.checkpoints, "jobs_db": args.jobs_db, "worker_poll_interval_s": args.poll_interval,
             "job_stale_after_s": args.stale_after, "worker_metrics_port": args.metrics_port, "threads": args.threads,
             "device": args.device, "job_runs_dir": args.runs_dir}
    settings = _settings("worker", flags)
    if settings is None:
        return EXIT_USAGE
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from service.worker import run_worker

    return run_worker(settings, once=args.once, metrics_host=args.metrics_host, parent_pid=args.parent_pid,
                      worker_id=args.worker_id)


COMMANDS: dict[str, Command] = {**LIBRARY_COMMANDS, "serve": cmd_serve, "worker": cmd_worker}


def main(argv: Sequence[str] | None = None) -> int:
    return run_command("rnnlm", COMMANDS, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
