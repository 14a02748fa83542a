"""Model cards and model versions: list, promote, roll back (the version logic is models/versions.py)."""
from __future__ import annotations

from pathlib import Path

from models import versions
from models.checkpoint import CONFIG, valid_name
from models.engine import Engine
from service.errors import ModelNotFoundError
from service.registry import ModelRegistry
from service.schemas import ModelCard, ModelDetail, ModelVersion
from service.settings import Settings


def written_at(engine: Engine) -> int:
    """When the served version of a model was written: its config's mtime (0 if it has no folder)."""
    path = engine.loaded.path
    try:
        return int((Path(path) / CONFIG).stat().st_mtime) if path else 0
    except OSError:
        return 0


def model_card(registry: ModelRegistry, engine: Engine) -> ModelCard:
    """The project's card of a model, with OpenAI's `id`, `object`, `created` and `owned_by`."""
    info = {k: v for k, v in engine.info().items() if k in ModelCard.model_fields}
    version = versions.version_of(engine.loaded.path) if engine.loaded.path else None
    return ModelCard(**info, id=engine.name, created=written_at(engine), aliases=registry.aliases_of(engine.name),
                     version=version)


def version_info(version: versions.Version, current: int) -> ModelVersion:
    gate = version.record.get("gate") or {}
    return ModelVersion(version=version.number, created=int(version.created), current=version.number == current,
                        valid_ppl=version.valid_ppl, test_ppl=version.test_ppl, provenance=version.provenance,
                        source=version.record.get("source") or {}, promoted=gate.get("promoted", True),
                        reason=gate.get("reason"))


class ModelService:
    """`/v1/models/{name}` and its versions. Promote and rollback rescan the checkpoint dir before they
    answer, so this process serves the new version at once (other processes on their next scan).
    Blocking file work and model loading: its routes are plain `def` (FastAPI's thread pool)."""

    def __init__(self, registry: ModelRegistry, settings: Settings) -> None:
        self.registry = registry
        self.root = Path(settings.checkpoints)

    def folder(self, name: str) -> Path:
        """The model folder of a name or alias, even if its current version fails to load (so that it
        can be rolled back); raises ModelNotFoundError."""
        if valid_name(name) and (self.root / name / CONFIG).is_file():
            return self.root / name
        resolved = self.registry.resolve(name)
        if resolved and (self.root / resolved / CONFIG).is_file():
            return self.root / resolved
        raise ModelNotFoundError(name, "name", f"no model {name!r} in the checkpoint dir; GET /v1/models lists them")

    def detail(self, name: str) -> ModelDetail:
        """The served model's card and every version of its name."""
        engine = self.registry.get(name, param="name")
        card = model_card(self.registry, engine)
        folder = self.root / engine.name
        if not (folder / CONFIG).is_file():  # served, but its folder is gone (removed a moment ago)
            return ModelDetail(**card.model_dump(), versions=[])
        current = versions.current_version(folder)
        return ModelDetail(**card.model_dump(),
                           versions=[version_info(v, current) for v in versions.list_versions(folder)])

    def promote(self, name: str, version: int, force: bool) -> ModelDetail:
        """Serve `version` if it passes the promotion gate (or with `force`); PromotionRefused otherwise."""
        folder = self.folder(name)
        versions.promote(folder, version, force=force)
        self.registry.reload()
        return self.detail(folder.name)

    def rollback(self, name: str, version: int | None) -> ModelDetail:
        """Serve the version served before the current one (or `version`), without the gate."""
        folder = self.folder(name)
        versions.rollback(folder, version)
        self.registry.reload()
        return self.detail(folder.name)
