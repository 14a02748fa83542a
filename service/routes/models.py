"""The models being served, and their versions (promote and rollback behind the API key)."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Path

from service.deps import ApiKeyDep, ModelServiceDep, RegistryDep
from service.metrics import label_model
from service.schemas import ErrorResponse, ModelDetail, ModelList, PromoteRequest, RollbackRequest
from service.serving.models import model_card

router = APIRouter(prefix="/v1/models", tags=["models"])

ADMIN_ERRORS = {401: {"model": ErrorResponse}, 403: {"model": ErrorResponse}, 404: {"model": ErrorResponse},
                409: {"model": ErrorResponse}, 422: {"model": ErrorResponse}}


@router.get("", response_model=ModelList)
async def list_models(registry: RegistryDep) -> ModelList:
    return ModelList(data=[model_card(registry, e) for e in registry.engines()])


@router.get("/{name}", response_model=ModelDetail, responses={404: {"model": ErrorResponse},
                                                               422: {"model": ErrorResponse}})
def get_model(name: str, models: ModelServiceDep) -> ModelDetail:
    """A model by name or alias, with every version of it: which one is served, and why a version was
    not promoted."""
    detail = models.detail(name)
    label_model(detail.name)
    return detail


# Plain `def`: promotion and rollback write files and load the model before they answer.
@router.post("/{name}/versions/{version}/promote", response_model=ModelDetail, dependencies=[ApiKeyDep],
             responses=ADMIN_ERRORS)
def promote_version(name: str, version: Annotated[int, Path(ge=1)], models: ModelServiceDep,
                    body: Annotated[PromoteRequest, Body()] = PromoteRequest()) -> ModelDetail:
    """Serve a version if its validation perplexity is no worse than the current one's on the same data
    (409 `promotion_refused` says why not), or anyway with `"force": true`."""
    return models.promote(name, version, force=body.force)


@router.post("/{name}/rollback", response_model=ModelDetail, dependencies=[ApiKeyDep], responses=ADMIN_ERRORS)
def rollback_model(name: str, models: ModelServiceDep,
                   body: Annotated[RollbackRequest, Body()] = RollbackRequest()) -> ModelDetail:
    """Serve the version that was served before the current one (or `version`), without the gate."""
    return models.rollback(name, body.version)
