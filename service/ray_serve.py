"""Serving replicas on Ray Serve: the same FastAPI app, N copies behind Ray's HTTP proxy.

`rnnlm serve --ray --replicas N [--max-replicas M]` (or `serve run service.ray_serve:app` with the
config file in docker/ray-serve.yaml) deploys `create_app(settings)` as a Ray Serve deployment
with the FastAPI ingress: every replica is a process of its own (a Ray actor) with its own models,
registry watcher, batcher and admission control, built from the same settings; Ray's proxy on every
node of the cluster listens on the one port and routes each request to a replica with room for it.
With `--max-replicas` the deployment autoscales between N and M replicas on queue depth (Ray's
`target_ongoing_requests`: requests queued at or running in a replica). Every replica reads the
models from the checkpoint folder, so on several machines it must be one shared location (an NFS or
other shared mount at the same path); the job store and the data roots likewise.

Each response carries `X-Replica: <replica id> pid <pid>`. Metrics are scraped per replica: each
replica serves its own Prometheus registry on a port of its own and, with `metrics_dir` set
(RNNLM_RAY_METRICS_DIR, a folder Prometheus reads), writes a file_sd target file there that names
it (`<replica id>.json`, removed when the replica stops); `/metrics` through the proxy answers for
whichever replica took the request.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import threading
from pathlib import Path
from typing import Any

from service.settings import Settings

log = logging.getLogger(__name__)

REPLICA_HEADER = b"x-replica"
APP_NAME = "rnnlm"


class ReplicaHeader:
    """Pure ASGI middleware: `X-Replica` on every HTTP response (streams included)."""

    def __init__(self, app: Any, value: str) -> None:
        self.app, self.value = app, value.encode()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_replica(message: dict) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (REPLICA_HEADER, self.value)]
            await send(message)

        await self.app(scope, receive, send_with_replica)


def replica_settings(settings: Settings) -> dict[str, Any]:
    """The settings every replica builds its app from: paths made absolute (a replica's working folder
    is Ray's), the key itself rather than the file it came from."""
    values = settings.model_dump(exclude={"api_key_file"})
    for key in ("checkpoints", "jobs_db"):
        if values.get(key) is not None:
            values[key] = str(Path(values[key]).resolve())
    if values.get("data_roots"):
        values["data_roots"] = [str(Path(p).resolve()) for p in values["data_roots"]]
    if settings.api_key is not None:
        values["api_key"] = settings.api_key.get_secret_value()
    return values


def _forget_dead_replicas(metrics_dir: Path, node: str) -> None:
    """Remove the target files of replicas of this node whose process is gone (killed, so never cleaned up)."""
    for path in metrics_dir.glob("*.json"):
        try:
            (group,) = json.loads(path.read_text())
            if not group["targets"][0].startswith(f"{node}:"):
                continue
            os.kill(int(group["labels"]["pid"]), 0)
        except ProcessLookupError:
            path.unlink(missing_ok=True)
        except (OSError, ValueError, KeyError, TypeError):
            continue


class Replica:
    """One replica: the app built from `values` in the replica's own process (None: from the replica's
    RNNLM_* environment, e.g. a Serve config file's runtime_env)."""

    def __init__(self, values: dict[str, Any] | None, metrics_dir: str | None = None) -> None:
        from ray import serve
        from ray.util import get_node_ip_address

        self.settings = Settings.model_validate(values) if values is not None else Settings()
        context = serve.get_replica_context()
        self.replica_id = context.replica_id.unique_id
        self.sd_file: Path | None = None
        if metrics_dir:
            from prometheus_client import start_http_server
            node = get_node_ip_address()  # the address Ray's nodes reach each other on, not every interface
            server, _ = start_http_server(0, addr=node)
            target = f"{node}:{server.server_port}"
            _forget_dead_replicas(Path(metrics_dir), node)
            self.sd_file = Path(metrics_dir) / f"{self.replica_id}.json"
            self.sd_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.sd_file.with_suffix(".tmp")
            tmp.write_text(json.dumps([{"targets": [target], "labels": {
                "replica": self.replica_id, "deployment": context.deployment, "pid": str(os.getpid())}}]))
            tmp.replace(self.sd_file)
            log.info("replica %s: metrics on http://%s/metrics", self.replica_id, target)

    def __serve_build_asgi_app__(self):
        from service.app import create_app
        app = create_app(self.settings)
        app.add_middleware(ReplicaHeader, value=f"{self.replica_id} pid {os.getpid()}")
        return app

    def __del__(self) -> None:
        if self.sd_file is not None:
            self.sd_file.unlink(missing_ok=True)


def deployment_options(replicas: int = 1, max_replicas: int | None = None, *, target_ongoing_requests: float = 2.0,
                       max_ongoing_requests: int = 8, num_cpus: float = 1.0) -> dict[str, Any]:
    """Fixed `replicas`, or autoscaling from `replicas` to `max_replicas` on queue depth."""
    options: dict[str, Any] = {"max_ongoing_requests": max_ongoing_requests,
                               "ray_actor_options": {"num_cpus": num_cpus}}
    if max_replicas is not None and max_replicas > replicas:
        options["autoscaling_config"] = {"min_replicas": replicas, "max_replicas": max_replicas,
                                         "target_ongoing_requests": target_ongoing_requests}
    else:
        options["num_replicas"] = replicas
    return options


def build(settings: Settings, metrics_dir: str | None = None, **options: Any):
    """The bound Ray Serve application for these settings (`serve.run` it)."""
    from ray import serve
    cls = serve.deployment(name="rnnlm", **deployment_options(**options))(serve.ingress()(Replica))
    return cls.bind(replica_settings(settings), metrics_dir)


def app(args: dict[str, Any]):
    """A Serve config file's `import_path` (docker/ray-serve.yaml: `serve run` / `serve deploy` it): each
    replica reads its settings from its RNNLM_* environment (the config's runtime_env, absolute paths);
    replicas and autoscaling come from the config's deployment options, `args.metrics_dir` as above."""
    from ray import serve
    metrics_dir = (args or {}).get("metrics_dir") or os.environ.get("RNNLM_RAY_METRICS_DIR")
    return serve.deployment(name="rnnlm")(serve.ingress()(Replica)).bind(None, metrics_dir)


def run(settings: Settings, *, replicas: int, max_replicas: int | None = None, address: str | None = None,
        num_cpus: float = 1.0, metrics_dir: str | None = None) -> int:
    """`rnnlm serve --ray`: deploy on the Ray cluster at `address` (default: $RAY_ADDRESS, else a
    local one-node cluster started here) and wait for SIGINT/SIGTERM, which undeploy it."""
    import ray
    from ray import serve

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    address = address or os.environ.get("RAY_ADDRESS")
    ray.init(address=address, include_dashboard=False, log_to_driver=True,
             **({} if address else {"num_cpus": max(os.cpu_count() or 1, int(replicas * num_cpus + 0.999))}))
    try:
        serve.start(http_options={"host": settings.host, "port": settings.port, "location": "EveryNode"})
        serve.run(build(settings, metrics_dir, replicas=replicas, max_replicas=max_replicas, num_cpus=num_cpus),
                  name=APP_NAME, route_prefix="/")
        print(f"rnnlm serve: {replicas}{'-' + str(max_replicas) if max_replicas else ''} replica(s) on Ray "
              f"at http://{settings.host}:{settings.port}", flush=True)
        stop.wait()
    finally:
        try:
            serve.delete(APP_NAME)
            if not address:
                serve.shutdown()
        finally:
            ray.shutdown()
    return 0
