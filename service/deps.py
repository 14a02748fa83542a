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


# `async` although they never await: FastAPI runs a plain `def` dependency in the thread pool, a thread
# hop per dependency per request (bench/load.py); these only read app.state.
async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_registry(request: Request) -> ModelRegistry:
    return request.app.state.registry


async def get_job_store(request: Request) -> JobStore:
    return request.app.state.jobs


async def get_scoring(request: Request) -> ScoringService:
    return request.app.state.scoring


async def get_next_word(request: Request) -> NextWordService:
    return request.app.state.next_word


async def get_generation(request: Request) -> GenerationService:
    return request.app.state.generation


async def get_job_service(request: Request) -> JobService:
    return request.app.state.job_service


async def get_completions(request: Request) -> CompletionService:
    return request.app.state.completions


async def get_dataset_service(request: Request) -> DatasetService:
    return request.app.state.dataset_service


async def get_model_service(request: Request) -> ModelService:
    return request.app.state.model_service


SettingsDep = Annotated[Settings, Depends(get_settings)]
RegistryDep = Annotated[ModelRegistry, Depends(get_registry)]
JobStoreDep = Annotated[JobStore, Depends(get_job_store)]
ScoringDep = Annotated[ScoringService, Depends(get_scoring)]
NextWordDep = Annotated[NextWordService, Depends(get_next_word)]
GenerationDep = Annotated[GenerationService, Depends(get_generation)]
JobServiceDep = Annotated[JobService, Depends(get_job_service)]
CompletionDep = Annotated[CompletionService, Depends(get_completions)]
ModelServiceDep = Annotated[ModelService, Depends(get_model_service)]
DatasetServiceDep = Annotated[DatasetService, Depends(get_dataset_service)]


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
