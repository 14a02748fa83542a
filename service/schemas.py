"""Request and response models of the HTTP API, in one place like vLLM's protocol.py.

Static ranges live here as Field constraints; limits that come from Settings (how many texts,
how long, the largest k / max_tokens / n) are checked by `service.serving.common.check_limits`.
"""
from __future__ import annotations

from dataclasses import fields as dataclass_fields
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from models.adapt import ADAPT_PRESET, PRESETS
from models.checkpoint import valid_name
from models.config import (
    STUDENT_SIZE,
    Amp,
    Arch,
    DistillConfig,
    Optimizer,
    Preset,
    SaveDtype,
    Schedule,
    SettingError,
    Style,
    TrainConfig,
    check_setting,
    defaults,
)

MAX_STOP = 4
MAX_SEED = 2**63 - 1


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty or whitespace only")
    return value


def _blank_to_none(value: Any) -> Any:
    return None if isinstance(value, str) and not value.strip() else value


def _one_or_many(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


# minLength and pattern only describe the check to the OpenAPI document (the validator's message is clearer)
Text = Annotated[str, AfterValidator(_not_blank), Field(json_schema_extra={"minLength": 1, "pattern": r"\S"})]
Context = Annotated[str | None, BeforeValidator(_blank_to_none), Field(
    None, description="a short free text the prediction is conditioned on (e.g. an article's subject), for "
                      "models trained with one; other models ignore it and say so in `warnings`")]
ModelName = Annotated[str | None, Field(None, description="model name or alias; default: the `default` alias",
                                        examples=["lstm"])]
FinishReason = Literal["length", "stop", "eos"]
OovConvention = Literal["unk-word", "open-vocab"]
OOV_CONVENTION_HELP = ("how a word outside the vocabulary is scored: `unk-word` gives it the whole <unk> probability "
                       "(the published perplexity convention), `open-vocab` its share p(<unk>) / N_unseen, so texts "
                       "with different numbers of unknown words compare fairly")
CACHE_HELP = ("read the texts as one document, in order, through the model's neural cache: words the document "
              "already used get more probability (a 422 if the model has no fitted cache)")


class Request(BaseModel):
    """Unknown fields are rejected so that a misspelt parameter is an error, not a silent default; values
    are strict, as the OpenAPI document says (`0` is not a boolean, `"5"` not an integer)."""
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)


# ---- errors -----------------------------------------------------------------------------------
class ErrorDetail(BaseModel):
    type: str = Field(description="machine-readable kind, e.g. invalid_request_error, model_not_found")
    message: str
    param: str | None = Field(None, description="the offending request field, dotted (`texts.2`)")


class ErrorResponse(BaseModel):
    error: ErrorDetail
    model_config = ConfigDict(json_schema_extra={"examples": [{"error": {
        "type": "invalid_request_error", "message": "texts.0: must not be empty or whitespace only",
        "param": "texts.0"}}]})


# ---- health and models ------------------------------------------------------------------------
class HealthResponse(BaseModel):
    status: Literal["ok"] = "ok"

    model_config = ConfigDict(json_schema_extra={"examples": [{"status": "ok"}]})


class WorkerState(BaseModel):
    """The training worker of `rnnlm serve --with-worker`."""
    status: Literal["running", "restarting", "stopped"] = Field(description="restarting: it died and a new one "
                                                                             "starts after a backoff")
    pid: int | None = None
    restarts: int = Field(description="workers started after one died")
    last_exit: str | None = Field(None, description="how the last worker ended, e.g. `killed by SIGKILL`")


class ReadyResponse(BaseModel):
    status: Literal["ready", "not_ready", "degraded"] = Field(description="degraded: the models are served but "
                                                                          "the training worker is down (503)")
    models: list[str]
    worker: WorkerState | None = Field(None, exclude_if=lambda v: v is None,
                                       description="only with `rnnlm serve --with-worker`")
    device: str | None = Field(None, description="where models are served (cpu, cuda:N); absent when the configured "
                                                "device is missing")
    error: str | None = Field(None, description="why no model is served, when it is the device's fault")

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"status": "ready", "models": ["gru", "lstm", "student"], "device": "cpu"},
        {"status": "not_ready", "models": [], "error": "device 'cuda' is not available: this PyTorch has no CUDA "
                                                   "support (torch 2.13.0+cpu); use --device cpu or auto"}]})


MODEL_CARD_EXAMPLE = {
    "id": "lstm", "object": "model", "created": 1796083200, "owned_by": "rnnlm-serve",
    "name": "lstm", "aliases": ["default"], "arch": "lstm", "parameters": 9273168, "vocab_size": 33278,
    "context": True, "emb": 200, "hidden": 256, "layers": 2, "adaptive_softmax": True, "dtype": "float16",
    "device": "cpu", "compute_dtype": "float32",
    "tokenizer": "wikitext", "metrics": {"valid_ppl": 120.9148, "test_ppl": 115.9719, "test_ppl_no_context": 118.8108},
    "provenance": {"corpus": "wikitext-2", "epochs": 22, "seed": 1234}}


class ModelCard(BaseModel):
    id: str = Field(description="the model's name (OpenAI's field)")
    object: Literal["model"] = "model"
    created: int = Field(description="when the served version was written (Unix seconds)")
    owned_by: str = "rnnlm-serve"
    name: str
    aliases: list[str] = Field(description="other names that resolve to this model")
    arch: str = Field(description="lstm, gru or rnn")
    parameters: int
    vocab_size: int
    context: bool = Field(description="whether the model was trained to condition on a `context`")
    emb: int | None = None
    hidden: int | None = None
    layers: int | None = None
    adaptive_softmax: bool | None = None
    dtype: str | None = Field(None, description="storage precision of the weights")
    device: str | None = Field(None, description="where the model runs: cpu or cuda:N")
    compute_dtype: str | None = Field(None, description="precision of the recurrent layers as served (fp32 on CPU; "
                                                        "bfloat16 or float16 on CUDA)")
    tokenizer: str | None = Field(None, description="text normalisation style (wikitext, ptb, none)")
    metrics: dict[str, Any] = Field(default_factory=dict, description="measured perplexities etc.")
    provenance: dict[str, Any] = Field(default_factory=dict, description="corpus, checksum, epochs, seed, ...")
    version: int | None = Field(None, description="the version being served (GET /v1/models/{name} lists them)")

    model_config = ConfigDict(json_schema_extra={"examples": [MODEL_CARD_EXAMPLE]})


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]

    model_config = ConfigDict(json_schema_extra={"examples": [{"object": "list", "data": [MODEL_CARD_EXAMPLE]}]})


# ---- model versions ---------------------------------------------------------------------------
MODEL_VERSIONS_EXAMPLE = [
    {"version": 1, "created": 1796083200, "current": False, "valid_ppl": 120.9148, "test_ppl": 115.9719,
     "provenance": {"corpus": "wikitext-2", "corpus_sha256": "9e9fa1ad55b1", "epochs": 22, "seed": 1234},
     "source": {}, "promoted": True, "reason": None},
    {"version": 2, "created": 1796090400, "current": True, "valid_ppl": 118.2, "test_ppl": 113.9,
     "provenance": {"corpus": "wikitext-2", "corpus_sha256": "9e9fa1ad55b1", "epochs": 3, "seed": 1},
     "source": {"job": "3f2c9a0e", "type": "train"}, "promoted": True,
     "reason": "validation perplexity 118.20 is no worse than version 1's 120.91"},
    {"version": 3, "created": 1796094000, "current": False, "valid_ppl": 3737.4, "test_ppl": 3690.1,
     "provenance": {"corpus": "wikitext-2", "corpus_sha256": "9e9fa1ad55b1", "epochs": 1, "seed": 1},
     "source": {"job": "8b1d4f77", "type": "train"}, "promoted": False,
     "reason": "validation perplexity 3737.40 is worse than version 2's 118.20"}]


class ModelVersion(BaseModel):
    version: int = Field(description="1 is the model folder's own files; later ones come from jobs")
    created: int = Field(description="when it was published (Unix seconds)")
    current: bool = Field(description="whether this version is the one served under the name")
    valid_ppl: float | None = Field(None, description="validation perplexity, what the promotion gate compares")
    test_ppl: float | None = None
    provenance: dict[str, Any] = Field(default_factory=dict, description="corpus, its sha256, epochs, seed, ...")
    source: dict[str, Any] = Field(default_factory=dict, description="the job that made it (id, type), if any")
    promoted: bool = Field(description="whether the promotion gate let it be served when it was published")
    reason: str | None = Field(None, description="the gate's reason: why it was promoted or, above all, why not")


class ModelDetail(ModelCard):
    """A model's card with all its versions, oldest first."""
    versions: list[ModelVersion]

    model_config = ConfigDict(json_schema_extra={"examples": [
        {**MODEL_CARD_EXAMPLE, "version": 2, "versions": MODEL_VERSIONS_EXAMPLE}]})


class PromoteRequest(Request):
    force: bool = Field(False, description="serve the version even if the promotion gate refuses it")

    model_config = ConfigDict(json_schema_extra={"examples": [{"force": False}, {"force": True}]})


class RollbackRequest(Request):
    version: int | None = Field(None, ge=1, description="the version to serve; default: the one served before")

    model_config = ConfigDict(json_schema_extra={"examples": [{}, {"version": 1}]})


# ---- scoring ----------------------------------------------------------------------------------
class ScoreRequest(Request):
    model: ModelName
    texts: list[Text] = Field(min_length=1, description="raw texts; each is normalised by the model's tokenizer")
    add_eos: bool = Field(True, description="also score the end of sentence (<eos>) after each text")
    details: bool = Field(False, description="return per-token log-probabilities")
    context: Context
    cache: bool = Field(False, description=CACHE_HELP)
    oov_convention: OovConvention = Field("open-vocab", description=OOV_CONVENTION_HELP)

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "model": "lstm", "texts": ["The game was released in Japan in 2011 .", "Japan released game the in ."],
        "add_eos": True, "details": False}]})


class TokenScore(BaseModel):
    token: str
    logprob: float = Field(description="natural log-probability")
    oov: bool = Field(description="the word is not in the vocabulary (scored as <unk>)")


class TextScore(BaseModel):
    text: str
    logprob: float = Field(description="sum of natural-log token probabilities")
    num_tokens: int = Field(description="predicted tokens, <eos> included when add_eos")
    perplexity: float
    oov_count: int
    tokens: list[TokenScore] | None = Field(None, exclude_if=lambda v: v is None,
                                            description="only with details=true")


class ContextInfo(BaseModel):
    context_used: bool = Field(False, description="whether `context` conditioned the model")
    warnings: list[str] = Field(default_factory=list)


class ScoringInfo(ContextInfo):
    oov_convention: OovConvention = Field("unk-word", description="how OOV words were scored (see the request)")
    cache: bool = Field(False, description="whether the texts were scored as one document with the neural cache")


class ScoreResponse(ScoringInfo):
    model: str
    results: list[TextScore]

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "context_used": False,
                    "warnings": [],
                    "model": "student",
                    "results": [
                        {
                            "text": "The song was a hit.",
                            "logprob": -26.6457,
                            "num_tokens": 7,
                            "perplexity": 44.994,
                            "oov_count": 0,
                            "tokens": [
                                {"token": "The", "logprob": -2.4772, "oov": False},
                                {"token": "song", "logprob": -6.8764, "oov": False},
                                {"token": "was", "logprob": -1.7436, "oov": False},
                                {"token": "a", "logprob": -2.3748, "oov": False},
                                {"token": "hit", "logprob": -7.688, "oov": False},
                                {"token": ".", "logprob": -3.8847, "oov": False},
                                {"token": "<eos>", "logprob": -1.601, "oov": False},
                            ],
                        }
                    ],
                }
            ]
        }
    )


class PerplexityRequest(Request):
    model: ModelName
    texts: list[Text] = Field(min_length=1)
    context: Context
    cache: bool = Field(False, description=CACHE_HELP)
    oov_convention: OovConvention = Field("unk-word", description=OOV_CONVENTION_HELP)

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "model": "lstm", "texts": ["The album was released in 1999 .", "It received positive reviews ."]}]})


class PerplexityResult(BaseModel):
    text: str
    perplexity: float
    num_tokens: int
    logprob: float
    oov_count: int


class PerplexityResponse(ScoringInfo):
    model: str
    perplexity: float = Field(description="exp(nll / num_tokens) over all tokens of all texts")
    num_tokens: int
    nll: float = Field(description="negative natural-log likelihood, summed")
    results: list[PerplexityResult]

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "context_used": False, "warnings": [], "model": "gru", "perplexity": 37.5668, "num_tokens": 21, "nll": 76.1485,
        "results": [{"text": "The city is the capital of the province.", "perplexity": 38.4085, "num_tokens": 10,
                     "logprob": -36.4828, "oov_count": 0},
                    {"text": "He played for the club in the 2005 season.", "perplexity": 36.8176, "num_tokens": 11,
                     "logprob": -39.6657, "oov_count": 0}]}]})


class RankRequest(Request):
    model: ModelName
    candidates: list[Text] = Field(min_length=1, description="alternatives to order, e.g. an ASR n-best list")
    context: Context
    oov_convention: OovConvention = Field("open-vocab", description=OOV_CONVENTION_HELP)

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "model": "lstm", "candidates": ["He went to the store .", "He went too the store .",
                                        "He went two the store ."]}]})


class RankResult(BaseModel):
    rank: int = Field(description="1 = most probable")
    text: str
    logprob: float
    num_tokens: int
    perplexity: float
    oov_count: int


class RankResponse(ScoringInfo):
    model: str
    results: list[RankResult] = Field(description="best first")

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "context_used": False, "warnings": [], "model": "lstm", "results": [
            {"rank": 1, "text": "I would like to recognise speech .", "logprob": -41.2953, "num_tokens": 8,
             "perplexity": 174.4982, "oov_count": 0},
            {"rank": 2, "text": "I would like to wreck a nice beach .", "logprob": -58.9273, "num_tokens": 10,
             "perplexity": 362.3935, "oov_count": 0}]}]})


# ---- next word and generation -----------------------------------------------------------------
class NextWordRequest(Request):
    model: ModelName
    text: str = Field(description="text typed so far; without a trailing space the last word is completed; "
                                  "may be empty (predict the first word)")
    k: int = Field(5, ge=1, description="number of predictions")
    context: Context
    cache: bool = Field(False, description="mix in the model's neural cache of the text typed so far: names and "
                                           "rare words already typed come back as suggestions")

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"model": "lstm", "text": "The company was founded in ", "k": 5},
        {"model": "lstm", "text": "The company was fou", "k": 3}]})


class Prediction(BaseModel):
    word: str
    prob: float


class NextWordResponse(ContextInfo):
    model: str
    predictions: list[Prediction] = Field(description="most probable first")
    completing: str | None = Field(description="the half-typed word being completed, or null")
    cache: bool = Field(False, description="whether the neural cache of the typed text was used")

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "context_used": False,
                    "warnings": [],
                    "model": "lstm",
                    "completing": "Lon",
                    "predictions": [
                        {"word": "London", "prob": 0.9838},
                        {"word": "Long", "prob": 0.0149},
                        {"word": "Lone", "prob": 0.0006},
                    ],
                }
            ]
        }
    )


class GenerateRequest(Request):
    model: ModelName
    prompt: str = ""
    context: Context
    max_tokens: int = Field(40, ge=1, description="tokens to generate per choice")
    temperature: float = Field(1.0, ge=0, description="0 = greedy")
    top_k: int = Field(0, ge=0, description="sample from the k most probable tokens; 0 = all")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling mass")
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="same seed, same output")
    stop: Annotated[list[Annotated[str, Field(min_length=1)]], BeforeValidator(_one_or_many)] = Field(
        default_factory=list, max_length=MAX_STOP, description="stop before any of these strings")
    n: int = Field(1, ge=1, description="number of choices")
    stream: bool = Field(False, description="send tokens as server-sent events")

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "model": "lstm", "prompt": "The film was", "max_tokens": 30, "temperature": 0.8, "top_p": 0.95,
        "seed": 42, "stop": ["."], "n": 1, "stream": False}]})


class Choice(BaseModel):
    index: int
    text: str = Field(description="the continuation, detokenised")
    tokens: list[str]
    logprob: float
    finish_reason: FinishReason


class GenerateResponse(ContextInfo):
    model: str
    choices: list[Choice]

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "context_used": True, "warnings": [], "model": "lstm", "choices": [{
            "index": 0, "text": "was even destroyed. In the same time,", "logprob": -27.2224, "finish_reason": "length",
            "tokens": ["was", "even", "destroyed", ".", "In", "the", "same", "time", ","]}]}]})


class StreamChunk(BaseModel):
    """One server-sent event of a streamed generation (`data: {...}`; the stream ends with `data: [DONE]`)."""
    index: int
    token: str | None = Field(description="the new token; null on a choice's final event")
    text: str = Field(description="the choice's text so far")
    logprob: float | None
    finish_reason: FinishReason | None = Field(None, description="set on a choice's final event")

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"index": 0, "token": "was", "text": "was", "logprob": -2.3982, "finish_reason": None}]
        }
    )


# ---- training jobs ----------------------------------------------------------------------------
# A job's settings are models.config's TrainConfig / DistillConfig: their choices and defaults are
# read from there and their values checked there (`check_setting`); the bounds below are only this
# API's caps on what one job may ask of the worker.
JobType = Literal["train", "distill"]
JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
MAX_SIZE = 4096
MAX_EPOCHS = 1000
_TRAIN, _DISTILL = defaults(TrainConfig), defaults(DistillConfig)
_SIZE = {"train": {k: _TRAIN[k] for k in STUDENT_SIZE}, "distill": STUDENT_SIZE}
# TrainConfig fields a job does not set: the worker chooses where the run writes; `init` and `teacher`
# name models in the checkpoint dir and the worker resolves them to folders
_WORKER_SET = {"data", "out", "run_dir", "init"}


def _model_name(value: str) -> str:
    if not valid_name(value):
        raise ValueError("must match ^[a-z0-9][a-z0-9._-]{0,63}$ (lower-case letters, digits, '.', '_', '-')")
    return value


ModelFolderName = Annotated[str, AfterValidator(_model_name)]


class JobRequest(Request):
    """A training (`train`) or distillation (`distill`) job; fields use the `rnnlm train` flag names."""
    type: JobType
    name: ModelFolderName = Field(description="name of the model to create (its folder in the checkpoint dir)",
                                  examples=["my-lstm"])
    data: Text | None = Field(None, max_length=4096, description="corpus folder with train.txt (valid.txt, "
                              "test.txt), under one of the data roots; or give `dataset`")
    dataset: ModelFolderName | None = Field(None, description="an uploaded dataset's name (POST /v1/datasets), "
                                            "instead of `data`", examples=["support-tickets"])
    arch: Arch = _TRAIN["arch"]
    emb: int | None = Field(None, le=MAX_SIZE, description=f"embedding size (default {_SIZE['train']['emb']}; "
                                                           f"distill {_SIZE['distill']['emb']})")
    hidden: int | None = Field(None, le=MAX_SIZE, description=f"hidden size (default {_SIZE['train']['hidden']}; "
                                                              f"distill {_SIZE['distill']['hidden']})")
    layers: int | None = Field(None, le=8, description=f"recurrent layers (default {_SIZE['train']['layers']}; "
                                                       f"distill {_SIZE['distill']['layers']})")
    epochs: int = Field(_TRAIN["epochs"], le=MAX_EPOCHS)
    dropout: float = _TRAIN["dropout"]
    batch_size: int = Field(_TRAIN["batch_size"], le=MAX_SIZE)
    bptt: int = Field(_TRAIN["bptt"], le=MAX_SIZE, description="truncated-BPTT window (tokens)")
    lr: float = _TRAIN["lr"]
    optimizer: Optimizer = _TRAIN["optimizer"]
    weight_decay: float = Field(_TRAIN["weight_decay"], le=1000)
    schedule: Schedule = Field(_TRAIN["schedule"], description="learning-rate schedule")
    average_from: int | None = Field(_TRAIN["average_from"], le=MAX_EPOCHS, description="from this epoch on, "
                                     "validate and save the average of the weights over every step (averaged SGD)")
    clip: float = Field(_TRAIN["clip"], le=1000, description="gradient-norm clipping; 0 = off")
    patience: int = Field(_TRAIN["patience"], le=MAX_EPOCHS, description="early stopping: epochs without improvement")
    tie: bool = Field(_TRAIN["tie"], description="tie input and output embeddings (full softmax)")
    adaptive: bool = Field(_TRAIN["adaptive"], description="adaptive softmax output")
    cutoffs: list[int] = Field(default_factory=lambda: list(_TRAIN["cutoffs"]), max_length=8,
                               description="adaptive softmax cluster cutoffs (word ranks)")
    context: bool = Field(_TRAIN["context"], description="condition on article titles (WikiText)")
    context_dropout: float = Field(_TRAIN["context_dropout"], description="share of rows trained without a topic")
    max_vocab: int | None = Field(_TRAIN["max_vocab"], le=10_000_000,
                                  description="train jobs only: vocabulary size cap")
    style: Style = Field(_TRAIN["style"], description="how raw text is normalised "
                                                  "when the model is served")
    train_tokens: int | None = Field(_TRAIN["train_tokens"], description="use only the first N training tokens")
    valid_tokens: int | None = Field(_TRAIN["valid_tokens"], description="use only the first N valid/test tokens")
    seed: int = _TRAIN["seed"]
    save_dtype: SaveDtype = _TRAIN["save_dtype"]
    device: str = Field(
        _TRAIN["device"],
        max_length=16,
        description="where the worker trains: auto (the worker's "
        "own device setting, RNNLM_DEVICE), cpu, cuda or cuda:N; a device the worker lacks fails the job",
    )
    amp: Amp = Field(
        _TRAIN["amp"], description="bf16: bf16 autocast for the forward pass (on CUDA; the loss stays fp32)"
    )
    nproc: int = Field(1, ge=1, le=64, description="processes per node: above 1 the worker runs the job under torchrun "
                       "with DistributedDataParallel; batch_size stays the global batch (split over the processes)")
    nnodes: int = Field(1, ge=1, le=64, validate_default=True, description="machines: above 1 the other nodes "
                        "join at rdzv_endpoint (see the README's Scaling section)")
    rdzv_endpoint: str | None = Field(None, max_length=255, validate_default=True,
                                      pattern=r"^[A-Za-z0-9.\-]+:[0-9]{1,5}$", examples=["10.0.0.5:29400"],
                                      description="host:port of the rendezvous, on the claiming worker's machine "
                                                  "(jobs with nnodes above 1)")
    init: ModelFolderName | None = Field(None, description="start from this served model's weights, architecture "
                                         "and vocabulary (a new run; the size fields are ignored)")
    preset: Preset = Field(_TRAIN["preset"], description="adapt (with init): fine-tune on a small corpus - the "
                           f"fields {', '.join(f'{k}={v}' for k, v in ADAPT_PRESET.items())} unless given")
    extend_vocab: int = Field(_TRAIN["extend_vocab"], le=1_000_000, description="with init: add up to N words of "
                              "the corpus the model does not know (new rows, initialised from <unk>)")
    min_count: int = Field(_TRAIN["min_count"], le=1_000_000, description="with extend_vocab: how often a new "
                           "word must occur in the training split")
    overwrite: bool = Field(False, description="add a new version to an existing model of this name; it is "
                            "served only if it passes the promotion gate (see GET /v1/models/{name})")
    teacher: ModelFolderName | None = Field(None, validate_default=True,
                                            description="distill jobs: the teacher model's name")
    temperature: float | None = Field(None, le=100, validate_default=True, description="distill jobs")
    alpha: float | None = Field(None, validate_default=True, description="distill jobs: weight of the soft-label term")
    kd_fraction: float | None = Field(None, validate_default=True, description="distill jobs")

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"type": "train", "name": "my-gru", "data": "/data/my-corpus", "arch": "gru", "emb": 200, "hidden": 256,
         "layers": 2, "epochs": 5},
        {"type": "distill", "name": "my-student", "data": "/data/wikitext-2", "teacher": "lstm", "emb": 96,
         "hidden": 192, "layers": 1, "epochs": 3, "temperature": 2.0, "alpha": 0.5}]})

    @field_validator(*(f.name for f in dataclass_fields(TrainConfig) if f.name not in _WORKER_SET),
                     *(f.name for f in dataclass_fields(DistillConfig)))
    @classmethod
    def _setting(cls, value: Any, info: ValidationInfo) -> Any:
        """The value rules of TrainConfig / DistillConfig, reported on the field."""
        if value is None:
            return value
        owner = DistillConfig if info.field_name in _DISTILL else TrainConfig
        try:
            return check_setting(owner, info.field_name, value)
        except SettingError as exc:
            raise ValueError(exc.reason) from None

    @field_validator("max_vocab")
    @classmethod
    def _student_vocab(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and info.data.get("type") == "distill":
            raise ValueError("a student shares its teacher's vocabulary; leave max_vocab out")
        return value

    @field_validator("teacher", "temperature", "alpha", "kd_fraction")
    @classmethod
    def _distill_only(cls, value: object, info: ValidationInfo) -> object:
        kind = info.data.get("type")
        if kind == "train" and value is not None:
            raise ValueError("only for distill jobs")
        if kind == "distill" and value is None:
            if info.field_name == "teacher":
                raise ValueError("a distill job needs a teacher model")
            value = _DISTILL[info.field_name]
        return value

    @field_validator("nnodes")
    @classmethod
    def _processes(cls, value: int, info: ValidationInfo) -> int:
        size, batch = info.data.get("nproc", 1) * value, info.data.get("batch_size")
        if batch is not None and batch % size:
            raise ValueError(f"batch_size {batch} (the global batch) must split evenly over nproc x nnodes = "
                             f"{size} processes")
        return value

    @field_validator("rdzv_endpoint")
    @classmethod
    def _rendezvous(cls, value: str | None, info: ValidationInfo) -> str | None:
        nnodes = info.data.get("nnodes", 1)
        if nnodes > 1 and value is None:
            raise ValueError("a job on several nodes needs rdzv_endpoint (host:port the other nodes join)")
        if nnodes == 1 and value is not None:
            raise ValueError("only for jobs with nnodes above 1")
        return value

    @model_validator(mode="after")
    def _corpus_and_preset(self) -> JobRequest:
        if self.data is None and self.dataset is None:
            raise ValueError("give the corpus as data (a folder) or dataset (an uploaded dataset's name)")
        if (self.preset != "none" or self.extend_vocab) and self.init is None:
            raise ValueError("preset adapt and extend_vocab adapt an existing model: give init")
        explicit = set(self.model_fields_set)
        for key, value in PRESETS.get(self.preset, {}).items():
            if key not in explicit:
                setattr(self, key, value)
        return self

    @model_validator(mode="after")
    def _size_defaults(self) -> JobRequest:
        for key, default in _SIZE[self.type].items():
            if getattr(self, key) is None:
                setattr(self, key, default)
        return self

    def to_train_config(self, out: str | Path, run_dir: str | Path, checkpoints: str | Path) -> TrainConfig:
        """The trainer's settings for this job, writing to `out` with its run state in `run_dir`;
        `init` is looked up in `checkpoints`."""
        return TrainConfig(
            data=self.data, out=str(out), run_dir=str(run_dir),
            init=str(Path(checkpoints) / self.init) if self.init else None,
            arch=self.arch, emb=self.emb, hidden=self.hidden, layers=self.layers, dropout=self.dropout,
            tie=self.tie, adaptive=self.adaptive, cutoffs=list(self.cutoffs), context=self.context,
            context_dropout=self.context_dropout, epochs=self.epochs, batch_size=self.batch_size, bptt=self.bptt,
            lr=self.lr, optimizer=self.optimizer, weight_decay=self.weight_decay, clip=self.clip,
            schedule=self.schedule, patience=self.patience, seed=self.seed, max_vocab=self.max_vocab,
            style=self.style, train_tokens=self.train_tokens, valid_tokens=self.valid_tokens,
            save_dtype=self.save_dtype, average_from=self.average_from, device=self.device, amp=self.amp,
            preset=self.preset, extend_vocab=self.extend_vocab, min_count=self.min_count)

    def to_distill_config(self) -> DistillConfig:
        return DistillConfig(temperature=self.temperature, alpha=self.alpha, kd_fraction=self.kd_fraction)


class JobCreated(BaseModel):
    id: str
    status: JobStatus

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"id": "67c7744cddfe454abc32e893987ba493", "status": "queued"}]})


class EpochRecord(BaseModel):
    epoch: int
    train_loss: float | None = Field(None, description="mean training loss (nats per token)")
    valid_ppl: float | None = Field(None, description="validation perplexity after the epoch")


class JobProgress(BaseModel):
    epoch: int | None = Field(None, description="last finished epoch (0: none yet)")
    epochs: int | None = None
    step: int | None = Field(None, description="optimiser steps of the run so far")
    total_steps: int | None = Field(None, description="steps of the whole run (epochs x steps per epoch)")
    epoch_step: int | None = Field(None, description="steps into the epoch in progress")
    epoch_steps: int | None = Field(None, description="steps per epoch")
    loss: float | None = Field(None, description="running mean training loss of the epoch in progress, or of the "
                                                 "last epoch once it ends (nats per token)")
    valid_ppl: float | None = Field(None, description="validation perplexity after the last finished epoch")
    best_valid_ppl: float | None = None
    tokens_per_s: float | None = Field(None, description="training throughput of the current or last epoch")
    eta_s: float | None = Field(None, description="estimated seconds to the end of the last epoch")
    lr: float | None = None
    history: list[EpochRecord] = Field(default_factory=list, description="one entry per finished epoch")
    resumed_from_epoch: int | None = Field(None, description="epoch this attempt resumed after (0: from scratch)")
    attempt: int | None = None


JOB_EXAMPLE = {
    "id": "67c7744cddfe454abc32e893987ba493", "type": "train", "name": "tiny-gru", "status": "running",
    "cancel_requested": False,
    "params": {"data": "/data/wikitext-2", "arch": "gru", "emb": 64, "hidden": 64, "layers": 1, "epochs": 2,
               "train_tokens": 200000, "valid_tokens": 20000},
    "progress": {"epoch": 1, "epochs": 2, "step": 135, "total_steps": 180, "loss": 7.1204, "valid_ppl": 970.6196,
                 "best_valid_ppl": 970.6196, "tokens_per_s": 30974.5, "eta_s": 3.4, "lr": 0.002,
                 "history": [{"epoch": 1, "train_loss": 7.5941, "valid_ppl": 970.6196}]},
    "model": None, "result": None, "error": None, "attempts": 1, "worker_id": "host-4711",
    "created_at": "2026-11-30T12:00:00Z", "started_at": "2026-11-30T12:00:01Z", "finished_at": None,
    "heartbeat_at": "2026-11-30T12:00:09Z"}


class JobInfo(BaseModel):
    id: str
    type: JobType
    name: str = Field(description="the model this job creates")
    status: JobStatus
    cancel_requested: bool
    params: dict[str, Any]
    progress: JobProgress | None = None
    model: str | None = Field(None, description="the model to use once the job has succeeded")
    result: dict[str, Any] | None = Field(None, description="metrics of the finished model")
    error: str | None = None
    attempts: int = Field(description="times a worker took this job (> 1 after a worker died or stopped)")
    worker_id: str | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    heartbeat_at: datetime | None = None

    model_config = ConfigDict(json_schema_extra={"examples": [JOB_EXAMPLE]})


class JobList(BaseModel):
    data: list[JobInfo] = Field(description="newest first")

    model_config = ConfigDict(json_schema_extra={"examples": [{"data": [JOB_EXAMPLE]}]})


# ---- datasets -----------------------------------------------------------------------------------
class DatasetUnknown(BaseModel):
    tokens: float = Field(description="share of the dataset's tokens (all splits) the model's vocabulary lacks "
                                      "(<unk> included)")
    words: float = Field(description="share of its distinct words the vocabulary lacks")
    top: list[str] = Field(description="its most frequent words the vocabulary lacks")


DATASET_EXAMPLE = {
    "name": "support-tickets", "created": "2026-12-01T01:00:00Z",
    "sha256": "2c1b6d3f0a9e8d7c6b5a49382716059f4e3d2c1b0a99887766554433221100ff", "style": "wikitext",
    "model": "lstm", "split": {"valid": 0.1, "test": 0.1, "seed": 0},
    "lines": {"train": 800, "valid": 100, "test": 100}, "tokens": {"train": 16210, "valid": 2050, "test": 1980},
    "vocab_size": 2431, "unknown": {"lstm": {"tokens": 0.031, "words": 0.12, "top": ["Acme", "SKU"]}}}


class DatasetInfo(BaseModel):
    """A stored dataset: how it was made and what is in it. Jobs name it in `dataset`."""
    name: str
    created: str
    sha256: str = Field(description="SHA-256 of the uploaded bytes (the files in name order when several)")
    style: str = Field(description="the tokenizer normalisation its text went through")
    model: str | None = Field(None, description="the model whose tokenizer normalised it")
    split: dict[str, Any] | str = Field(description="the valid/test fractions and seed of the split by line, or "
                                                    "\"as uploaded\"")
    lines: dict[str, int]
    tokens: dict[str, int]
    vocab_size: int = Field(description="distinct words of the train split")
    unknown: dict[str, DatasetUnknown] = Field(description="per served model: what its vocabulary lacks")

    model_config = ConfigDict(json_schema_extra={"examples": [DATASET_EXAMPLE]})


class DatasetList(BaseModel):
    object: Literal["list"] = "list"
    data: list[DatasetInfo] = Field(description="by name")

    model_config = ConfigDict(json_schema_extra={"examples": [{"object": "list", "data": [DATASET_EXAMPLE]}]})
