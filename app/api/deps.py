"""Dependency aliases for routes (FastAPI ``Annotated`` style)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.config import Settings
from app.jobs.runner import JobRunner
from app.pacs.dicomweb import PacsClient
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


def _jobs(request: Request) -> JobRunner:
    return request.app.state.integrations.runner


def _pacs(request: Request) -> PacsClient | None:
    return request.app.state.integrations.pacs


JobsDep = Annotated[JobRunner, Depends(_jobs)]
PacsDep = Annotated[PacsClient | None, Depends(_pacs)]
