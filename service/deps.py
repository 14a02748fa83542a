"""Dependencies shared by the routers: settings, registry, job store, the serving classes, API key."""
from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.errors import AuthenticationError, PermissionDeniedError
from service.jobs import JobStore
from service.registry import ModelRegistry
from service.serving import (
    CompletionService,
    DatasetService,
    GenerationService,
    JobService,
    ModelService,
    NextWordService,
    ScoringService,
)
from service.settings import Settings


def _state(name: str):
    """A dependency that reads `app.state.<name>`. `async` although it never awaits: FastAPI runs a plain
    `def` dependency in the thread pool, a thread hop per dependency per request (bench/load.py)."""
    async def read(request: Request):
        return getattr(request.app.state, name)
    read.__name__ = f"get_{name}"
    return read


SettingsDep = Annotated[Settings, Depends(_state("settings"))]
RegistryDep = Annotated[ModelRegistry, Depends(_state("registry"))]
JobStoreDep = Annotated[JobStore, Depends(_state("jobs"))]
ScoringDep = Annotated[ScoringService, Depends(_state("scoring"))]
NextWordDep = Annotated[NextWordService, Depends(_state("next_word"))]
GenerationDep = Annotated[GenerationService, Depends(_state("generation"))]
JobServiceDep = Annotated[JobService, Depends(_state("job_service"))]
CompletionDep = Annotated[CompletionService, Depends(_state("completions"))]
ModelServiceDep = Annotated[ModelService, Depends(_state("model_service"))]
DatasetServiceDep = Annotated[DatasetService, Depends(_state("dataset_service"))]


# The key as an OpenAPI security scheme (the Authorize button of /docs); missing or non-Bearer credentials
# come through as None and are refused below in the API's error shape, not by FastAPI.
bearer = HTTPBearer(scheme_name="APIKey", description="`RNNLM_API_KEY`: always needed on the training-job routes, "
                    "and on the inference routes when `RNNLM_API_KEY_INFERENCE` is set", auto_error=False)
BearerDep = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


async def require_api_key(settings: SettingsDep, credentials: BearerDep) -> None:
    """With an API key configured, demand `Authorization: Bearer <key>` (jobs and admin routes):
    AuthenticationError (401) when it is missing, PermissionDeniedError (403) when it is wrong."""
    if settings.api_key is None:
        return
    token = credentials.credentials.strip() if credentials is not None else ""
    if not token:
        raise AuthenticationError("this route needs an API key (Authorization: Bearer <key>)")
    if not secrets.compare_digest(token.encode(), settings.api_key.get_secret_value().encode()):
        raise PermissionDeniedError("wrong API key")


async def require_inference_key(settings: SettingsDep, credentials: BearerDep) -> None:
    """The API key check on the inference routes, when `api_key_inference` asks for it."""
    if settings.api_key_inference:
        await require_api_key(settings, credentials)


ApiKeyDep = Depends(require_api_key)
InferenceKeyDep = Depends(require_inference_key)
