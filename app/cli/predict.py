"""``python -m app.predict -i <folder or files> -o <folder>``: segment a folder of cases in this process,
with exactly the service's pipeline and no server (nnU-Net's ``predict -i -o`` habit).

Cases are found the way training finds them, through the shared layout table
(:mod:`segcore.case_layouts`): a folder that provides the model's modalities under a known layout is a
case, and so is a folder of DICOM files (a series or, for a multi-modality model, a study). ``-i`` may
name case folders, folders of case folders, or single NIfTI/DICOM files (single-modality models).

Every case goes through the service layer (:class:`app.service.SegmentationService`: the same reading,
checks, pipeline and writers as ``POST /segment``), so a mask written here is the mask the server would
answer for the same files. Output, per case ``<id>``: ``<id>.json`` (the service's JSON answer),
``<id>.nii.gz`` and/or ``<id>.png`` / ``<id>.seg.dcm`` as ``--format`` asks, or ``<id>.error.json``
(``{"error", "detail"}`` as the API would answer) when the case fails; and for the folder, ``volumes.csv``
(one row per case and label or region). A failed case does not stop the run; the exit code is 1 if any
failed, 2 if nothing could be started.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import inspect
import json
import logging
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from app.config import Settings
from app.errors import ApiError
from app.inputs.uploads import UploadedFile
from app.outputs.formats import FORMATS
from segcore.case_layouts import LAYOUTS, find_images

log = logging.getLogger("app.predict")

MASK_FORMATS = ("nifti", "png", "dicom-seg")
SUFFIX = {"nifti": ".nii.gz", "png": ".png", "dicom-seg": ".seg.dcm"}
CSV_FIELDS = ("case", "model", "version", "kind", "value", "name", "voxels", "volume_ml")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class CaseInput:
    """One case to segment: its files as ``(form field, path)`` pairs, as a client would post them, or the
    reason no files could be found for it."""

    case_id: str
    files: list[tuple[str, Path]] = field(default_factory=list)
    problem: str | None = None


def _is_dicom(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            return fh.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def _dicom_files(folder: Path) -> list[Path]:
    """DICOM files (by their ``DICM`` preamble, not their names) anywhere under ``folder``, sorted."""
    return [p for p in sorted(folder.rglob("*")) if p.is_file() and _is_dicom(p)]


def _case_in(folder: Path, modalities: list[str]) -> CaseInput | None:
    """``folder`` as one case: NIfTI files under a known layout first, else the DICOM files in it."""
    found = find_images(folder, modalities)
    if found is not None:
        return CaseInput(folder.name, [(m, found[1][m]) for m in modalities])
    dicoms = _dicom_files(folder)
    if dicoms:
        # One series feeds a single-modality model; a multi-modality model takes a whole study under
        # `study`, whose series the service maps onto the modalities (or refuses with the candidates).
        field_name = modalities[0] if len(modalities) == 1 else "study"
        return CaseInput(folder.name, [(field_name, p) for p in dicoms])
    return None


def discover(inputs: list[Path], modalities: list[str]) -> list[CaseInput]:
    """The cases named by ``inputs``, in order: a file is a case (single-modality models), a folder is a
    case if it is one, else each of its sub-folders is (one that matches nothing is a failed case, so the
    user hears about it). Case ids must be unique: they name the output files."""
    cases: list[CaseInput] = []
    for path in inputs:
        if path.is_file():
            stem = path.name.removesuffix(".gz").removesuffix(".nii").removesuffix(".dcm")
            if len(modalities) == 1:
                cases.append(CaseInput(stem, [(modalities[0], path)]))
            else:
                cases.append(CaseInput(stem, problem=f"one file cannot feed a model needing {', '.join(modalities)}"))
            continue
        if not path.is_dir():
            cases.append(CaseInput(path.name or str(path), problem=f"{path} does not exist"))
            continue
        case = _case_in(path, modalities)
        if case is not None:
            cases.append(case)
            continue
        for sub in sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")):
            cases.append(
                _case_in(sub, modalities)
                or CaseInput(
                    sub.name,
                    problem=f"no {', '.join(modalities)} found: neither DICOM files nor a known layout "
                    f"({', '.join(layout.name for layout in LAYOUTS)})",
                )
            )
    ids = [c.case_id for c in cases]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ValueError(f"case ids must be unique (they name the output files): {', '.join(duplicates)}")
    return cases


def volume_rows(case_id: str, body: dict) -> list[dict]:
    """CSV rows of one JSON answer: one per label, one per BraTS region, and the total."""
    model, version = body["model"]["name"], body["model"]["version"]
    rows = [
        {
            "kind": "label",
            "value": lab["value"],
            "name": lab["name"],
            "voxels": lab["voxels"],
            "volume_ml": lab["volume_ml"],
        }
        for lab in body["labels"]
    ]
    rows += [
        {
            "kind": "region",
            "value": "+".join(map(str, r["labels"])),
            "name": name,
            "voxels": r["voxels"],
            "volume_ml": r["volume_ml"],
        }
        for name, r in body.get("regions", {}).items()
    ]
    rows.append(
        {
            "kind": "total",
            "value": "",
            "name": "all labels",
            "voxels": body["tumour_voxels"],
            "volume_ml": body["tumour_volume_ml"],
        }
    )
    return [{"case": case_id, "model": model, "version": version, **row} for row in rows]


class Predictor:
    """The service layer of ``python -m app``, built from the same settings (``SEG_*``), holding one
    loaded model version for the whole run."""

    def __init__(self, settings: Settings, model: str, version: int | None) -> None:
        from app.registry import ModelRegistry
        from app.runners.backends import runner_factory  # TensorFlow: after the thread settings
        from app.service import SegmentationService

        self.settings = settings
        registry = ModelRegistry(
            settings.models_dir,
            runner_factory(settings),
            keep_versions=settings.keep_versions,
            pinned=settings.pinned_versions,
        )
        registry.refresh(model)
        self.service = SegmentationService.from_settings(registry, settings)
        self.model = self.service.resolve(model, version)
        # preprocess=auto|none goes to the service where it takes it (DESIGN §3, the clinical-inputs issue);
        # a service without a preprocessing stage does none either way, so there is nothing to switch off.
        self._takes_preprocess = "preprocess" in inspect.signature(self.service.segment).parameters

    def _uploads(self, case: CaseInput, work: Path) -> list[UploadedFile]:
        """The case's files as the service's uploads, linked (not copied) into the private ``work``: the
        readers stage files beside their input, and the input folder may be read-only (../shared/data is)."""
        uploads = []
        for i, (field_name, path) in enumerate(case.files):
            link = work / f"{i:05d}-{_UNSAFE.sub('_', path.name)[-80:]}"
            link.symlink_to(path.resolve())
            uploads.append(UploadedFile(field_name, path.name, link, path.stat().st_size))
        return uploads

    async def run(self, case: CaseInput, out_dir: Path, formats: list[str], preprocess: str) -> dict:
        """Segment one case (one model run) and write its JSON answer and ``formats`` into ``out_dir``;
        returns the JSON answer. Raises ``ApiError`` as the API would answer. The files appear in
        ``out_dir`` only once all are written, so a failed case leaves nothing but its ``.error.json``."""
        if case.problem:
            raise ApiError(422, "no_case", case.problem)
        work = Path(tempfile.mkdtemp(prefix="predict-", dir=self.settings.tmp_dir))
        try:
            extra = {"preprocess": preprocess} if self._takes_preprocess else {}
            wanted = [FORMATS["json"], *(FORMATS[name] for name in formats)]  # one segmentation, every format
            answer = await self.service.segment(self.model, self._uploads(case, work), work, wanted, **extra)
            done = work / "done"
            done.mkdir()
            (done / f"{case.case_id}.json").write_text(json.dumps(answer.payload, indent=2))
            for name in formats:
                payload = answer.payloads.get(name)
                if payload is None:  # left out by the service: a DICOM SEG needs a DICOM input
                    log.warning("case %s: no %s (the input is not DICOM)", case.case_id, name)
                    continue
                target = done / f"{case.case_id}{SUFFIX[name]}"
                if isinstance(payload, Path):
                    shutil.move(payload, target)
                else:
                    target.write_bytes(payload)
            for path in done.iterdir():
                shutil.move(path, out_dir / path.name)
            return answer.payload
        finally:
            shutil.rmtree(work, ignore_errors=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m app.predict",
        description="Segment every case under the given folders or files with the service's pipeline, in process.",
    )
    parser.add_argument(
        "-i", "--input", nargs="+", required=True, type=Path, help="case folders, folders of cases, or files"
    )
    parser.add_argument(
        "-o", "--output", required=True, type=Path, help="folder for masks, JSON answers and volumes.csv"
    )
    parser.add_argument("-m", "--model", default=None, help="model name (default: SEG_DEFAULT_MODEL)")
    parser.add_argument("--version", type=int, default=None, help="model version (default: the newest loadable)")
    parser.add_argument(
        "--format",
        action="append",
        choices=MASK_FORMATS,
        default=None,
        dest="formats",
        help="mask file(s) to write, repeatable (default: nifti); the JSON answer is always written",
    )
    parser.add_argument("--preprocess", choices=("auto", "none"), default="auto", help="as the API's preprocess=")
    parser.add_argument("-v", "--verbose", action="store_true", help="log the service's own lines too")
    return parser


async def _run_all(predictor: Predictor, cases: list[CaseInput], out_dir: Path, formats: list[str], preprocess: str):
    """Every case in turn under a tqdm bar; returns (CSV rows, failures as (case id, error, detail))."""
    from tqdm import tqdm

    rows: list[dict] = []
    failures: list[tuple[str, str, str]] = []
    with tqdm(cases, unit="case", desc="segmenting", file=sys.stderr) as bar:
        for case in bar:
            bar.set_postfix_str(case.case_id)
            try:
                body = await predictor.run(case, out_dir, formats, preprocess)
            except ApiError as exc:
                failures.append((case.case_id, exc.code, exc.detail))
            except Exception as exc:  # one broken case must not end the run; reported, never silent
                log.exception("case_failed case=%s", case.case_id)
                failures.append((case.case_id, "internal_error", f"{type(exc).__name__}: {exc}"))
            else:
                rows += volume_rows(case.case_id, body)
                continue
            _, code, detail = failures[-1]
            (out_dir / f"{case.case_id}.error.json").write_text(json.dumps({"error": code, "detail": detail}, indent=2))
            bar.write(f"{case.case_id}: failed: {detail}", file=sys.stderr)
    return rows, failures


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s %(message)s"
    )
    from segcore.threads import apply_thread_env

    settings = Settings()
    apply_thread_env(intra_op=settings.intra_op_threads, inter_op=settings.inter_op_threads)
    model_name = args.model or settings.default_model
    try:
        predictor = Predictor(settings, model_name, args.version)
        cases = discover([p.expanduser() for p in args.input], predictor.model.card.modalities)
    except (ApiError, ValueError) as exc:
        print(f"app.predict: {exc}", file=sys.stderr)
        return 2
    if not cases:
        print(f"app.predict: no cases found under {', '.join(map(str, args.input))}", file=sys.stderr)
        return 2
    args.output.mkdir(parents=True, exist_ok=True)
    formats = args.formats or ["nifti"]
    rows, failures = asyncio.run(_run_all(predictor, cases, args.output, formats, args.preprocess))
    with (args.output / "volumes.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    model = predictor.model
    print(
        f"{len(cases) - len(failures)} of {len(cases)} cases segmented with {model.name} v{model.version} "
        f"into {args.output}",
        file=sys.stderr,
    )
    for case_id, _, detail in failures:
        print(f"  failed {case_id}: {detail}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
