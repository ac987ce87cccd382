"""The JSON shapes of the HTTP API (DESIGN §3), as pydantic models: what OpenAPI (``/docs``) shows and what
scripts may rely on. Routes declare them as response models; the service's dicts are validated into them.

Optional fields are left out of an answer when they do not apply (a version's ``error`` only when it failed,
``load_ms`` only once loaded), so these models are served with ``response_model_exclude_unset``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from segcore.card import ModelCard

VersionState = Literal["serving", "loaded", "unloading", "failed", "refused", "available"]


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer: a stable code for scripts and a sentence for people."""

    error: str = Field(description="stable code, e.g. unknown_model, upload_too_large, busy")
    detail: str = Field(description="what went wrong, for people")


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready"]
    models: dict[str, int] = Field(description="model name -> the version it serves")


class Promotion(BaseModel):
    """The quality gate's verdict on a version (app.quality_gate)."""

    promoted: bool = Field(description="may be served by default")
    by: Literal["gate", "operator", "first"] = Field(
        description="gate: validation Dice compared with the version it replaces; operator: promoted explicitly; "
        "first: no earlier version to compare with"
    )
    reason: str = Field(description="the comparison, in one sentence")


class NotReady(ErrorBody):
    """``/readyz`` while some model under ``SEG_MODELS_DIR`` serves no version."""

    models: dict[str, int] = Field(description="model name -> the version it serves (the ready ones)")
    not_ready: dict[str, str] = Field(description="model name -> why it serves nothing")


class BackendTrial(BaseModel):
    """One candidate of ``SEG_BACKEND=auto`` for one version (app/runners/auto.py)."""

    backend: str
    verdict: Literal["chosen", "accepted", "refused", "failed", "not_applicable"] = Field(
        description="chosen (serves); accepted (agreed with TensorFlow, slower); refused (outside the "
        "tolerance); failed (did not build or answer); not_applicable (e.g. no INT8 variant)"
    )
    load_ms: float | None = Field(None, description="time to build the runner (load, convert, compile)")
    warmup_ms: float | None = Field(
        None, description="fastest pass over the version's warm-up requests (accepted and chosen only)"
    )
    rounds_ms: list[float] | None = Field(
        None, description="every timed round's mean pass (warmup_ms is the fastest); rounds interleave backends"
    )
    cache: Literal["hit", "miss", "off"] | None = Field(
        None,
        description="OpenVINO: the converted model came from SEG_CACHE_DIR (hit), was converted and "
        "written now (miss), or converted in memory (off)",
    )
    max_abs_diff: float | None = Field(None, description="largest probability difference from TensorFlow")
    changed_fraction: float | None = Field(None, description="fraction of voxels whose class differs from TF's")
    reason: str | None = Field(None, description="why refused or failed (or chosen though not the fastest pass)")


class VersionInfo(BaseModel):
    version: int = Field(ge=1)
    state: VersionState = Field(
        description="serving; loaded (ask with version=N); unloading (requests still on it); failed; "
        "refused (by the quality gate: worse validation than the version it would replace); available"
    )
    error: str | None = Field(None, description="why it failed (failed only)")
    reason: str | None = Field(None, description="why the quality gate refused it (refused only)")
    loaded: bool | None = Field(None, description="refused only: loaded, so version=N answers (to try it)")
    promotion: Promotion | None = Field(None, description="the quality gate's verdict (versions it judged)")
    load_ms: float | None = Field(None, description="time to load (loaded versions)")
    warmup_ms: float | None = Field(None, description="time to replay the warm-up requests (loaded versions)")
    backend: str | None = Field(None, description="the runtime that answers for this version (loaded versions)")
    backend_selection: list[BackendTrial] | None = Field(
        None, description="SEG_BACKEND=auto: every candidate's timings and agreement, and which one was chosen"
    )


class VersionPolicy(BaseModel):
    """Exactly one of the two: the pinned version, or how many of the newest stay loaded."""

    pinned: int | None = None
    latest: int | None = None


class ModelDescription(BaseModel):
    name: str
    served_version: int | None
    policy: VersionPolicy
    versions: list[VersionInfo]
    card: ModelCard | None = Field(description="the served version's model card")


class ModelList(BaseModel):
    models: list[ModelDescription]


class LabelVolume(BaseModel):
    value: int
    name: str
    voxels: int
    volume_ml: float


class RegionVolume(BaseModel):
    labels: list[int]
    voxels: int
    volume_ml: float


class Geometry(BaseModel):
    """The mask's grid, which is the input's (first modality's) grid; ITK order (x, y, z), mm, LPS."""

    size: list[int]
    spacing: list[float]
    origin: list[float]
    direction: list[float]


class ModelRef(BaseModel):
    name: str
    version: int


class SegmentationSummary(BaseModel):
    """``POST /segment?format=json``."""

    model: ModelRef
    labels: list[LabelVolume]
    regions: dict[str, RegionVolume] = Field(description="BraTS WT/TC/ET for a multi-class model, else {}")
    tumour_volume_ml: float
    tumour_voxels: int
    bounding_box: list[list[int]] | None = Field(description="inclusive [start, stop] per axis, ITK order (x, y, z)")
    geometry: Geometry
    timings_ms: dict[str, float]
    preprocessing: dict | None = Field(
        None, description="steps run before the network (ms each), registration metric per modality, brain mL"
    )
    warnings: list[dict[str, str]] = Field(
        default_factory=list, description="what to doubt: {code, detail}; the codes also in X-Input-Warnings"
    )
    series: dict[str, dict] | None = Field(
        None, description="a study upload: the series chosen per modality (number, description, UID)"
    )


JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class JobStage(BaseModel):
    name: str = Field(
        description="read, queue, segment, write; query/retrieve/store (DICOMweb); select/send (listener)"
    )
    state: Literal["running", "done"]
    started: float = Field(description="Unix time (s)")
    ms: float | None = Field(description="duration once done")


class JobRecord(BaseModel):
    """``GET /jobs/{id}``: what a job is doing or did. Times are Unix seconds; durations milliseconds."""

    id: str
    kind: Literal["upload", "dicomweb", "listener"]
    state: JobState
    model: ModelRef | None
    source: dict = Field(description="what was segmented: field names and counts, or study/series UIDs")
    stage: str | None = Field(description="the running stage, if any")
    stages: list[JobStage]
    created: float
    started: float | None
    finished: float | None
    timings_ms: dict[str, float | None] = Field(description="waiting, running, and each stage's duration")
    error: ErrorBody | None = Field(description="why it failed: the code and sentence /segment would answer")
    formats: list[str] = Field(description="formats GET /jobs/{id}/result can answer")
    outcome: dict = Field(description="series chosen (and why others were not), where the SEG was stored")


class JobAccepted(BaseModel):
    """``202`` for a started job; ``location`` is also the ``Location`` header."""

    id: str
    state: JobState
    location: str


class JobList(BaseModel):
    jobs: list[JobRecord] = Field(description="newest first")
    active: int = Field(description="jobs of this process queued or running")
