"""Stage-by-stage time of the preprocessing chain on a raw four-series study (target: within 20 s).

    .venv/bin/python benchmarks/preprocess.py [--repeat 2] [--out benchmarks/results/preprocess.json]

The study is made from the one real head with its skull in ../shared/data (the sagittal Siemens
MPRAGE): the MPRAGE itself is the reference (read as the card's first modality), and three further
"series" are that head moved rigidly (a few degrees and millimetres, as a patient moves between
series), resampled onto their own grids (axial 0.9 x 0.9 x 5 mm like a clinical FLAIR or T2, 1 mm like a
3D T1c) and given another contrast (an intensity remapping). So every step runs as on a scanner's study:
skull detection on 4 images, deepbet brain extraction, 3 rigid registrations, brain masking, and (with
``--n4``, as a card may ask) N4 on 4 images. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import load_average  # noqa: E402
from segcore.card import Preprocessing  # noqa: E402
from segcore.preprocess import prepare_input  # noqa: E402
from segcore.preprocess.skullstrip import default_networks  # noqa: E402

MPRAGE = REPO.parent / "shared" / "data" / "dicom" / "siemens_t1_mprage_sagittal" / "t1_MPRAGEcr_noGRAPPA_19"


def read_mprage() -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    (uid,) = reader.GetGDCMSeriesIDs(str(MPRAGE))
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(MPRAGE), uid))
    return sitk.Cast(reader.Execute(), sitk.sitkFloat32)


def moved_series(head: sitk.Image, degrees: float, shift_mm: tuple, spacing: tuple, contrast: str) -> sitk.Image:
    """``head`` moved rigidly, resampled onto an axial grid of ``spacing`` (mm), intensities remapped."""
    centre = head.TransformContinuousIndexToPhysicalPoint([s / 2 for s in head.GetSize()])
    motion = sitk.Euler3DTransform(centre, math.radians(degrees), math.radians(degrees / 2), 0.0, shift_mm)
    axial = sitk.DICOMOrient(head, "LPS")
    size = [int(round(n * s / t)) for n, s, t in zip(axial.GetSize(), axial.GetSpacing(), spacing, strict=True)]
    grid = sitk.Image(size, sitk.sitkFloat32)
    grid.SetOrigin(axial.GetOrigin())
    grid.SetSpacing(spacing)
    image = sitk.Resample(head, grid, motion.GetInverse(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    array = sitk.GetArrayFromImage(image)
    if contrast == "t2":  # bright fluid, darker white matter: a decreasing map of T1 intensities
        array = np.where(array > 20, 900.0 - 0.8 * array, array)
    elif contrast == "flair":
        array = np.where(array > 20, 300.0 + 0.3 * np.abs(array - 350.0), array)
    out = sitk.GetImageFromArray(np.clip(array, 0, None).astype(np.float32))
    out.CopyInformation(image)
    return out


def run_once(images: dict[str, sitk.Image], spec: Preprocessing) -> dict:
    t0, cpu0 = time.perf_counter(), time.process_time()
    result = prepare_input(images, spec, list(images), "auto")
    total = (time.perf_counter() - t0) * 1000
    # CPU seconds of this process (all threads): what the run costs, whatever else shares the machine.
    cpu = time.process_time() - cpu0
    return {"total_ms": round(total, 1), "cpu_s": round(cpu, 1), "steps": result.report.steps,
            "registration": result.report.registration,
            "brain_volume_ml": round(result.report.brain_volume_ml or 0, 1),
            "warnings": [w.code for w in result.report.warnings]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--n4", action="store_true", help="also run N4 on every series (as a card may ask)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "preprocess.json")
    args = parser.parse_args(argv)
    if not MPRAGE.is_dir():
        parser.error(f"real data not available: {MPRAGE}")
    head = read_mprage()
    images = {
        "t1": head,
        "t1c": moved_series(head, 4.0, (3.0, -5.0, 4.0), (1.0, 1.0, 1.0), "t1"),
        "flair": moved_series(head, -6.0, (-4.0, 6.0, -3.0), (0.9, 0.9, 5.0), "flair"),
        "t2": moved_series(head, 3.0, (5.0, 2.0, 6.0), (0.9, 0.9, 5.0), "t2"),
    }
    t0 = time.perf_counter()
    networks = default_networks()
    load_ms = (time.perf_counter() - t0) * 1000
    spec = Preprocessing(registration="rigid", skull_strip=True, bias_correction="n4" if args.n4 else "none")
    runs = []
    for _ in range(args.repeat):
        runs.append(run_once(images, spec))
    best = min(runs, key=lambda r: r["total_ms"])
    print(f"{'step':<18}{'modality':<10}{'ms (best run)':>14}")
    for step in best["steps"]:
        print(f"{step['step']:<18}{step.get('modality', ''):<10}{step['ms']:>14.0f}")
    print(f"{'total':<28}{best['total_ms']:>14.0f}   (runs: {[r['total_ms'] for r in runs]}; target 20000)")
    print(f"CPU time {best['cpu_s']} s (2 cores: a quiet machine's wall time is about half of it); "
          f"load average {load_average()}")
    print(f"brain {best['brain_volume_ml']} mL; warnings {best['warnings']}; networks loaded in {load_ms:.0f} ms "
          f"({networks.backend})")
    result = {
        "benchmark": "preprocess",
        "study": "real MPRAGE (skull on) + 3 moved, regridded, recontrasted copies = 4 raw series",
        "spec": spec.model_dump(),
        "backend": networks.backend,
        "networks_load_ms": round(load_ms, 1),
        "runs": runs,
        "best_total_ms": best["total_ms"],
        "target_ms": 20000,
        "load_average_after": load_average(),
        "machine": {"cpus": __import__("os").cpu_count(), "platform": platform.platform()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
