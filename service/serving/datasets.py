"""Uploaded datasets: the request body (raw text, or multipart files) streamed to a temporary folder
under the datasets dir, then checked, normalised, split, counted and stored by `models.dataset`."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from fastapi import HTTPException, Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from models import dataset
from models.errors import DataError
from service.errors import BadRequestError, ConflictError
from service.registry import ModelRegistry
from service.schemas import DatasetInfo, DatasetList
from service.settings import Settings

FILE_FIELDS = {"file": "text", "text": "text", "train": "train", "valid": "valid", "test": "test"}
CHUNK = 1 << 20


def dataset_info(ds: dataset.Dataset) -> DatasetInfo:
    return DatasetInfo(**{k: v for k, v in ds.info.items() if k in DatasetInfo.model_fields})


class DatasetService:
    """`/v1/datasets*` over the datasets dir (RNNLM_DATASETS_DIR)."""

    def __init__(self, registry: ModelRegistry, settings: Settings) -> None:
        self.registry = registry
        self.settings = settings

    @property
    def root(self) -> Path:
        if self.settings.datasets_dir is None:
            raise BadRequestError("dataset uploads are off: the server has no datasets dir (set RNNLM_DATASETS_DIR)")
        return Path(self.settings.datasets_dir)

    async def upload(self, request: Request, name: str, model: str | None, valid: float, test: float,
                     seed: int) -> DatasetInfo:
        """Store the request's text as dataset `name`, normalised by `model`'s tokenizer."""
        root = self.root
        try:
            dataset.check_name(name)
        except DataError as exc:
            raise BadRequestError(str(exc), "name") from None
        if (root / name).exists():
            raise ConflictError(f"dataset {name!r} already exists; delete it first or choose another name", "name")
        engine = self.registry.get(model)
        vocabs = {e.name: e.tokenizer.vocab for e in self.registry.engines()}
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".upload-", dir=root))  # hidden: never listed as a dataset
        try:
            files, source = await self._receive(request, tmp)
            try:
                ds = await run_in_threadpool(dataset.from_files, root, name, files, engine.tokenizer.style, valid,
                                             test, seed, vocabs, source, engine.name)
            except dataset.DatasetExists:
                raise
            except DataError as exc:
                raise BadRequestError(str(exc), "file") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return dataset_info(ds)

    async def _receive(self, request: Request, tmp: Path) -> tuple[dict[str, Path], str | None]:
        """The body's files written under `tmp` ({"text": ...} or the splits) and the uploaded file name."""
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind == "application/json":
            raise HTTPException(415, "send the text itself (Content-Type: text/plain) or multipart/form-data "
                                     "with a `file` field, not JSON")
        if kind != "multipart/form-data":
            path = tmp / "text"
            with open(path, "wb") as out:
                async for chunk in request.stream():
                    out.write(chunk)
            return {"text": path}, None
        files: dict[str, Path] = {}
        source = None
        async with request.form(max_files=4, max_fields=4) as form:
            for key, value in form.multi_items():
                if not isinstance(value, UploadFile) or key not in FILE_FIELDS:
                    raise BadRequestError(f"unexpected form field {key!r}: send `file` (split by line), or `train` "
                                          "(and `valid`, `test`) as files", key)
                split = FILE_FIELDS[key]
                if split in files:
                    raise BadRequestError(f"form field {key!r} given twice", key)
                files[split] = tmp / split
                source = source or value.filename
                with open(files[split], "wb") as out:
                    while chunk := await value.read(CHUNK):
                        out.write(chunk)
        if not files:
            raise BadRequestError("no file in the form: send `file`, or `train` (and `valid`, `test`)", "file")
        if "text" in files and len(files) > 1:
            raise BadRequestError("send either `file` (split by line) or `train`/`valid`/`test`, not both", "file")
        return files, source

    def list(self) -> DatasetList:
        if self.settings.datasets_dir is None:
            return DatasetList(data=[])
        return DatasetList(data=[dataset_info(ds) for ds in dataset.list_all(self.root)])

    def get(self, name: str) -> DatasetInfo:
        return dataset_info(self._get(name))

    def delete(self, name: str) -> DatasetInfo:
        info = dataset_info(self._get(name))
        dataset.delete(self.root, name)
        return info

    def path(self, name: str) -> Path:
        """The folder of dataset `name` (a job's corpus)."""
        return self._get(name, param="dataset").path

    def _get(self, name: str, param: str = "name") -> dataset.Dataset:
        try:
            return dataset.get(self.root, name)
        except dataset.DatasetNotFound as exc:
            exc.param = param
            raise
        except DataError as exc:
            raise BadRequestError(str(exc), param) from None
