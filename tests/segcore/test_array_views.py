"""No SimpleITK array *view* of a temporary image anywhere in the shipped code.

``sitk.GetArrayViewFromImage(x)`` returns a NumPy view of ``x``'s buffer that does not keep ``x`` alive:
on a temporary (``GetArrayViewFromImage(sitk.BinaryDilate(...)) > 0``) the image is freed when the call
returns and the view reads freed memory. This project met that bug three times: the evaluator (issue 5),
``brain_overlap`` (a good study refused with "0 % overlap") and the preprocessing chain (a server
killed by a segfault in NumPy on a FLAIR + T1c request). A view is fine of a name that outlives it; a
temporary needs ``GetArrayFromImage`` (a copy). This test reads the source, so it fails before a crash.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHIPPED = ("app", "segcore", "training", "benchmarks")


def _views_of_temporaries(path: Path) -> list[int]:
    """Line numbers in ``path`` where ``GetArrayViewFromImage`` is called on anything but a name."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "GetArrayViewFromImage"
            and node.args
            and not isinstance(node.args[0], ast.Name | ast.Attribute)
        ):
            found.append(node.lineno)
    return found


def test_no_array_view_of_a_temporary_image():
    files = [p for folder in SHIPPED for p in (REPO / folder).rglob("*.py")]
    assert len(files) > 50  # the scan really ran over the code
    offenders = [f"{path.relative_to(REPO)}:{line}" for path in files for line in _views_of_temporaries(path)]
    assert offenders == [], f"array views of temporary images (use GetArrayFromImage): {offenders}"


def test_the_check_catches_a_view_of_a_temporary(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import SimpleITK as sitk\n"
        "image = sitk.Image(2, 2, 0)\n"
        "fine = sitk.GetArrayViewFromImage(image) > 0\n"
        "bad = sitk.GetArrayViewFromImage(sitk.Cast(image, sitk.sitkUInt8)) > 0\n"
    )
    assert _views_of_temporaries(probe) == [4]
