"""The models being served."""
from __future__ import annotations

from fastapi import APIRouter

from models.engine import Engine
from service.deps import RegistryDep
from service.metrics import label_model
from service.registry import ModelRegistry
from service.schemas import ErrorResponse, ModelCard, ModelList

router = APIRouter(prefix="/v1/models", tags=["models"])


def model_card(registry: ModelRegistry, engine: Engine) -> ModelCard:
    info = {k: v for k, v in engine.info().items() if k in ModelCard.model_fields}
    return ModelCard(**info, aliases=registry.aliases_of(engine.name))


@router.get("", response_model=ModelList)
async def list_models(registry: RegistryDep) -> ModelList:
    return ModelList(data=[model_card(registry, e) for e in registry.engines()])


@router.get("/{name}", response_model=ModelCard, responses={404: {"model": ErrorResponse},
                                                             422: {"model": ErrorResponse}})
async def get_model(name: str, registry: RegistryDep) -> ModelCard:
    """A model by name or alias."""
    engine = registry.get(name, param="name")
    label_model(engine.name)
    return model_card(registry, engine)
