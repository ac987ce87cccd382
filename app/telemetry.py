"""Prometheus metrics (prometheus-client), registered once per process."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter("seg_http_requests_total", "HTTP requests by route and status", ["route", "status"])
INFERENCE_SECONDS = Histogram(
    "seg_inference_seconds",
    "Model time per study (tiling + network), by model and version",
    ["model", "version"],
    buckets=(0.25, 0.5, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89),
)
STAGE_SECONDS = Histogram(
    "seg_stage_seconds",
    "Time per pipeline stage (read, queue (waiting for a slot), preprocess, infer, postprocess, write)",
    ["stage"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
)
PREPROCESS_STEP_SECONDS = Histogram(
    "seg_preprocess_step_seconds",
    "Time per step before the network (detect, skull_strip, registration, apply_brain_mask, bias_correction)",
    ["step"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
)
INPUT_WARNINGS = Counter("seg_input_warnings_total", "Warnings given with answers, by code", ["code"])
QUEUE_DEPTH = Gauge("seg_queue_depth", "Requests waiting for an inference slot")
IN_FLIGHT = Gauge("seg_inferences_in_flight", "Studies being segmented now")
SERVED_VERSION = Gauge("seg_model_served_version", "Version served by default, per model", ["model"])
LOAD_SECONDS = Histogram("seg_model_load_seconds", "Time to load and warm a model version", ["model", "phase"])
LOAD_FAILURES = Counter("seg_model_load_failures_total", "Model versions that failed to load or warm", ["model"])
REFUSED_VERSIONS = Counter(
    "seg_model_refused_versions_total", "Versions the quality gate refused (worse validation than served)", ["model"]
)
