"""Datasets: upload raw text for training jobs, list, inspect, delete. Uploads need the API key."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from models.checkpoint import NAME_RE
from service.deps import ApiKeyDep, DatasetServiceDep
from service.schemas import DatasetInfo, DatasetList, ErrorResponse

ERRORS = {400: {"model": ErrorResponse}, 401: {"model": ErrorResponse}, 403: {"model": ErrorResponse},
          404: {"model": ErrorResponse}, 422: {"model": ErrorResponse}}
router = APIRouter(prefix="/v1/datasets", tags=["datasets"], dependencies=[ApiKeyDep], responses=ERRORS)

UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "description": "UTF-8 text, one sentence or paragraph per line: "
        "the raw body, or multipart/form-data with `file` (split by line) or `train` (and `valid`, `test`)",
        "content": {
            "text/plain": {"schema": {"type": "string"}, "example": "The Acme X200 ships today.\n"},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        k: {"type": "string", "format": "binary"} for k in ("file", "train", "valid", "test")
                    },
                }
            },
        },
    }
}


@router.post("", status_code=201, response_model=DatasetInfo, openapi_extra=UPLOAD_BODY,
             responses={409: {"model": ErrorResponse}, 413: {"model": ErrorResponse}, 415: {"model": ErrorResponse}})
async def upload_dataset(request: Request, response: Response, datasets: DatasetServiceDep,
                         name: Annotated[str, Query(min_length=1, max_length=64, pattern=NAME_RE.pattern,
                                                    description="the dataset's name, used by jobs")],
                         model: Annotated[str | None, Query(description="whose tokenizer normalises the text "
                                                                        "(default: the default model)")] = None,
                         valid: Annotated[float, Query(ge=0, lt=1, description="share of lines for valid")] = 0.1,
                         test: Annotated[float, Query(ge=0, lt=1, description="share of lines for test")] = 0.1,
                         seed: Annotated[int, Query(ge=0, le=2**31 - 1, description="seed of the split")] = 0,
                         ) -> DatasetInfo:
    """Store raw text as a dataset: normalised by the model's tokenizer, split by line (one file), counted."""
    info = await datasets.upload(request, name, model, valid, test, seed)
    response.headers["Location"] = f"/v1/datasets/{info.name}"
    return info


@router.get("", response_model=DatasetList)
def list_datasets(datasets: DatasetServiceDep) -> DatasetList:
    return datasets.list()


@router.get("/{name}", response_model=DatasetInfo)
def get_dataset(name: str, datasets: DatasetServiceDep) -> DatasetInfo:
    return datasets.get(name)


@router.delete("/{name}", response_model=DatasetInfo)
def delete_dataset(name: str, datasets: DatasetServiceDep) -> DatasetInfo:
    """Remove a dataset and answer what it was (models already trained on it keep working)."""
    return datasets.delete(name)
