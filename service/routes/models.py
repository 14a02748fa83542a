"""The models being served."""
from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter

from models.checkpoint import CONFIG
from models.engine import Engine
from service.deps import RegistryDep
from service.metrics import label_model
from service.registry import ModelRegistry
from service.schemas import ErrorResponse, ModelCard, ModelList

router = APIRouter(prefix="/v1/models", tags=["models"])


def model_card(registry: ModelRegistry, engine: Engine) -> ModelCard:
    """The project's card of a model, with OpenAI's `id`, `object`, `created` and `owned_by`."""
    info = {k: v for k, v in engine.info().items() if k in ModelCard.model_fields}
    return ModelCard(**info, id=engine.name, created=written_at(engine), aliases=registry.aliases_of(engine.name))


def written_at(engine: Engine) -> int:
    """When the served version of a model was written: its config's mtime (0 if it has no folder)."""
    path = engine.loaded.path
    try:
        return int((Path(path) / CONFIG).stat().st_mtime) if path else 0
    except OSError:
        return 0


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
