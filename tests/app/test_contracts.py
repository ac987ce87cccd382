"""The HTTP JSON shapes are the documented ones: OpenAPI names them, and what the real server answers
validates against them (app/api/schemas.py)."""

import SimpleITK as sitk

from app.api.schemas import ModelDescription, ModelList, Readiness, SegmentationSummary
from app.outputs.formats import FORMATS
from tests.helpers import synthetic_head


def test_openapi_shows_the_response_models_and_the_formats(server):
    with server.client() as client:
        spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    assert {"ModelList", "ModelDescription", "Readiness", "SegmentationSummary", "ErrorBody", "ModelCard"} <= set(
        schemas
    )
    segment = spec["paths"]["/segment"]["post"]
    (fmt,) = [p for p in segment["parameters"] if p["name"] == "format"]
    assert fmt["schema"]["enum"] == list(FORMATS)
    assert "multipart/form-data" in segment["requestBody"]["content"]
    answer = segment["responses"]["200"]["content"]
    assert answer["application/json"]["schema"] == {"$ref": "#/components/schemas/SegmentationSummary"}
    assert {"application/gzip", "image/png", "application/dicom"} <= set(answer)


def test_real_answers_validate_against_the_documented_models(server, tmp_path):
    head, _ = synthetic_head()
    study = tmp_path / "head.nii.gz"
    sitk.WriteImage(head, str(study))
    with server.client() as client:
        ready = Readiness.model_validate(client.get("/readyz").json())
        listed = ModelList.model_validate(client.get("/models").json())
        one = ModelDescription.model_validate(client.get("/models/brats-wt-flair").json())
        r = client.post("/segment", params={"format": "json"}, files={"flair": ("head.nii.gz", study.read_bytes())})
    assert r.status_code == 200, r.text
    summary = SegmentationSummary.model_validate(r.json())
    assert ready.models["brats-wt-flair"] == one.served_version == summary.model.version
    assert {m.name for m in listed.models} >= {"brats-wt-flair", "bright-t1"}
    assert one.card is not None and one.card.name == "brats-wt-flair"
    assert summary.geometry.size == list(head.GetSize())
