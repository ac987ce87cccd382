from __future__ import annotations

import asyncio

from fastapi import APIRouter
from pydantic import TypeAdapter, ValidationError

from app.api.deps import RegistryDep
from app.api.schemas import ErrorBody, ModelDescription, ModelList
from app.errors import ApiError
from app.registry import ModelRegistry, UnknownModel
from segcore.card import ModelName

router = APIRouter(prefix="/models", tags=["models"])
# Fields that do not apply (a version's error unless it failed, load times until it is loaded) are left out.
_DESCRIBED = {"response_model": ModelDescription, "response_model_exclude_unset": True}
_UNKNOWN = {404: {"model": ErrorBody, "description": "no such model"}}
_MODEL_NAME = TypeAdapter(ModelName)  # the card's own name rule: never "..", a hidden or a path-like name


@router.get("", response_model=ModelList, response_model_exclude_unset=True)
async def list_models(registry: RegistryDep) -> dict:
    return {"models": [registry.describe(name) for name in registry.names()]}


def _real_name(name: str, registry: ModelRegistry) -> str:
    """``name`` if it can be a model: valid as a card's name (so never ``..``, a hidden or a path-like
    name), and known to the registry or a directory directly under the models directory."""
    try:
        _MODEL_NAME.validate_python(name)
    except ValidationError:
        raise ApiError(404, "unknown_model", "model names are lower-case letters, digits, '.', '_' and '-'") from None
    if name not in registry.names() and not (registry.models_dir / name).is_dir():
        raise ApiError(404, "unknown_model", f'no model named "{name}"')
    return name


@router.get("/{name}", **_DESCRIBED, responses=_UNKNOWN)
async def get_model(name: str, registry: RegistryDep) -> dict:
    """Served version, version policy, the served card, and every version with its state: ``serving``,
    ``loaded`` (request it with ``version=N``), ``unloading``, ``failed`` (with the error), ``refused`` (by
    the quality gate, with the reason) or ``available``; judged versions carry ``promotion``."""
    name = _real_name(name, registry)
    try:
        return registry.describe(name)
    except UnknownModel:
        raise ApiError(404, "unknown_model", f'no model named "{name}"') from None


@router.post("/{name}/versions/{version}/promote", **_DESCRIBED, responses=_UNKNOWN)
async def promote_version(name: str, version: int, registry: RegistryDep) -> dict:
    """An operator promotes ``version`` past the quality gate (kept across restarts in
    ``<models_dir>/<name>/.promotions.json``); it is served at once if it is the newest promoted version.
    Answers with the model's state afterwards. ``python -m app.cli.promote`` calls this."""
    try:
        return await asyncio.to_thread(registry.promote, name, version)
    except UnknownModel:
        raise ApiError(404, "unknown_version", f'no complete version {version} of model "{name}" on disk') from None


@router.post("/{name}/reload", **_DESCRIBED, responses=_UNKNOWN)
async def reload_model(name: str, registry: RegistryDep) -> dict:
    """Rescan ``models_dir/<name>`` now and apply the version policy (what the poller does every
    ``SEG_POLL_SECONDS``); answers with the model's state afterwards."""
    name = _real_name(name, registry)
    await asyncio.to_thread(registry.refresh, name)
    return registry.describe(name)
