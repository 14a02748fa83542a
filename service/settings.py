"""Service configuration: one pydantic-settings class, read from `RNNLM_*` environment variables."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from models.device import DEVICE_HELP, ServeDtype, valid_device
from service.jobs import parse_location

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
# API keys refused on a public address: the examples' placeholders, and anything this short
PLACEHOLDER_KEYS = frozenset({"change-me", "changeme", "change-me-too", "change-this", "secret", "password",
                              "api-key", "your-api-key", "xxx", "test"})
MIN_KEY_CHARS = 16


class Settings(BaseSettings):
    """Everything the service reads from its environment (`RNNLM_<FIELD>`) or from CLI flags."""

    model_config = SettingsConfigDict(env_prefix="RNNLM_", extra="ignore")

    # models
    checkpoints: Path = Path("checkpoints")
    default_model: str = "lstm"
    aliases: dict[str, str] = Field(default_factory=dict, description='alias -> model, JSON in the environment')
    reload_interval_s: float = Field(2.0, description="checkpoint dir poll interval; <= 0 disables hot reload")

    # server
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    api_key: SecretStr | None = None
    api_key_file: Path | None = Field(None, description="read the API key from this file (e.g. a Docker or "
                                                        "Kubernetes secret) rather than from RNNLM_API_KEY")
    api_key_inference: bool = Field(False, description="also require the API key on the inference routes (score, "
                                                       "perplexity, rank, next-word, generate, completions)")
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="`,`-separated origins browsers may call the API from (CORS); empty = "
                                          "CORS off (same-origin pages only)")
    threads: int | None = Field(None, ge=1, description="torch intra-op threads (default: torch's choice, one per "
                                "core, which serves fastest on two cores: README, Performance)")

    # request limits
    max_texts: int = Field(64, ge=1, description="texts per /v1/score or /v1/perplexity, candidates per /v1/rank")
    max_text_chars: int = Field(10_000, ge=1, description="characters per text, prompt, context or stop string")
    max_k: int = Field(100, ge=1, description="largest k for /v1/next-word")
    max_tokens: int = Field(512, ge=1, description="largest max_tokens for /v1/generate")
    max_n: int = Field(8, ge=1, description="largest n (choices) for /v1/generate")
    max_body_bytes: int = Field(8 * 2**20, ge=1024, description="largest request body; bigger ones get 413")

    # performance
    batching: bool = Field(True, description="merge concurrent score/perplexity/rank requests per model")
    batch_wait_ms: float = Field(5.0, ge=0, description="how long a batch waits for more requests")
    max_batch_texts: int = Field(64, ge=1, description="texts per merged engine call (a request is never split)")
    max_queue: int = Field(256, ge=1, description="requests waiting per model; more get 503 with Retry-After")
    state_cache_mb: float = Field(64.0, ge=0, description="recurrent-state cache per model for next-word and "
                                                          "generate prompts, MiB; 0 = off")
    quantize: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="`,`-separated models served as dynamic int8: faster, but scores "
                                          "shift slightly and depend on the batch (bench/quantize.py)")

    # overload (service/admission.py, service/server.py)
    admission: bool = Field(True, description="limit the inference requests running at once; the excess gets "
                                              "503 with Retry-After at once")
    admission_initial_limit: int = Field(64, ge=1, description="requests running at once before latency is measured "
                                         "(64: one full micro-batch of one-text requests)")
    admission_min_limit: int = Field(2, ge=1, description="the adaptive limit never goes below this")
    admission_max_limit: int = Field(64, ge=1, description="the adaptive limit never goes above this")
    admission_tolerance: float = Field(3.0, gt=1.0, description="the limit shrinks when admitted requests take "
                                                                "over this many times their unloaded latency")
    admission_max_wait_ms: float = Field(100.0, gt=0, description="a request that waited longer than this before "
                                                                  "the app could read it gets 503")
    admission_retry_after_s: int = Field(1, ge=1, description="Retry-After of a 503 from admission control")
    request_read_timeout_s: float = Field(10.0, gt=0, description="a connection that has not sent a whole request "
                                                                  "(headers and body) this long after it opened or "
                                                                  "began the request is closed")
    http: Literal["httptools", "h11"] = Field("httptools", description="the HTTP/1.1 parser (service/server.py): "
                                              "httptools (llhttp, in C) or uvicorn's pure-Python h11")
    loop: Literal["auto", "asyncio", "uvloop"] = Field("auto", description="the event loop: auto (uvloop when "
                                                       "installed), asyncio or uvloop")

    # devices (models.device)
    device: str = Field("auto", description="where models are served and jobs train: auto (CUDA when available), "
                                            "cpu, cuda or cuda:N; a missing one leaves /ready at 503 saying why")
    serve_dtype: ServeDtype = Field("auto", description="precision of served recurrent layers on CUDA (auto: bf16, "
                                                       "else fp16); always fp32 on the CPU")

    # training jobs (used by the jobs API and the worker)
    data_roots: Annotated[list[Path], NoDecode] = Field(default_factory=list,
                                                        description="`:`-separated corpus folders jobs may read")
    jobs_db: Path | str = Field(Path("jobs.db"), description="the job store: a SQLite file (a path, or "
                                "sqlite:///relative/path, sqlite:////absolute/path) or a PostgreSQL URL "
                                "(postgresql://user@host:5432/db) for API replicas and workers on several hosts")
    job_runs_dir: Path | None = Field(None, description="where workers keep running jobs' resumable state (all "
                                      "workers must reach it to resume each other's jobs); default: runs/ beside "
                                      "a SQLite job store, runs/ beside the checkpoints folder with PostgreSQL")
    # uploaded datasets (POST /v1/datasets): stored here, which is also a data root for jobs
    datasets_dir: Path | None = Field(None, description="folder of uploaded datasets; unset: uploads are off")
    max_dataset_bytes: int = Field(64 * 2**20, ge=1, description="largest dataset upload; bigger ones get 413")
    job_stale_after_s: float = Field(30.0, gt=0, description="a running job without a worker heartbeat for "
                                                             "this long is re-queued (its worker died)")
    worker_poll_interval_s: float = Field(1.0, gt=0, description="how often an idle worker looks for jobs")
    worker_metrics_port: int = Field(0, ge=0, le=65535, description="worker's Prometheus port; 0 = off")
    worker_restart_backoff_s: float = Field(0.5, gt=0, le=30, description="serve --with-worker: wait before "
                                            "restarting a dead worker; doubles while workers die young, up to 30 s")

    @property
    def job_data_roots(self) -> list[Path]:
        """Where a job's corpus may lie: the data roots and the uploaded datasets' folder."""
        return list(self.data_roots) + ([self.datasets_dir] if self.datasets_dir is not None else [])

    @field_validator("jobs_db", mode="before")
    @classmethod
    def _job_store_location(cls, value: object) -> object:
        if isinstance(value, (str, Path)):
            backend, target = parse_location(value)  # a ValueError names the forms it takes
            return value if backend == "postgresql" else Path(target)
        return value

    @field_validator("data_roots", mode="before")
    @classmethod
    def _split_roots(cls, value: object) -> object:
        if isinstance(value, str):
            return [part for part in value.split(":") if part.strip()]
        return value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("device")
    @classmethod
    def _device_name(cls, value: str) -> str:
        value = value.strip().lower()
        if not valid_device(value):
            raise ValueError(f"must be {DEVICE_HELP}; got {value!r}")
        return value

    @field_validator("quantize", mode="before")
    @classmethod
    def _split_names(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("api_key", mode="before")
    @classmethod
    def _blank_key_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _key_from_file(self) -> Settings:
        if self.api_key_file is None:
            return self
        if self.api_key is not None:
            raise ValueError("give the API key once: api_key or api_key_file, not both")
        try:
            key = self.api_key_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"cannot read the API key file {self.api_key_file}: {exc}") from None
        if not key:
            raise ValueError(f"the API key file {self.api_key_file} is empty")
        self.api_key = SecretStr(key)
        return self

    @property
    def api_key_is_placeholder(self) -> bool:
        """The key is an example value (`change-me`) or too short to be a secret."""
        if self.api_key is None:
            return False
        key = self.api_key.get_secret_value()
        return len(key) < MIN_KEY_CHARS or key.lower().replace("_", "-") in PLACEHOLDER_KEYS

    @model_validator(mode="after")
    def _inference_key_needs_a_key(self) -> Settings:
        if self.api_key_inference and self.api_key is None:
            raise ValueError("api_key_inference needs an api_key (RNNLM_API_KEY)")
        return self

    @model_validator(mode="after")
    def _default_alias(self) -> Settings:
        self.aliases = {"default": self.default_model, **self.aliases}
        return self

    @property
    def loopback(self) -> bool:
        return self.host in LOOPBACK_HOSTS
