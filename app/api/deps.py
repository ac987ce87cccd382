"""Dependency aliases for routes (FastAPI ``Annotated`` style)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.config import Settings
from app.registry import ModelRegistry
from app.service import SegmentationService


def _settings(request: Request) -> Settings:
    return request.app.state.settings


def _service(request: Request) -> SegmentationService:
    return request.app.state.service


def _registry(request: Request) -> ModelRegistry:
    return request.app.state.service.registry


SettingsDep = Annotated[Settings, Depends(_settings)]
ServiceDep = Annotated[SegmentationService, Depends(_service)]
RegistryDep = Annotated[ModelRegistry, Depends(_registry)]
