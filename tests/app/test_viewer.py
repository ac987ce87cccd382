"""The page at ``GET /`` in a real browser: Debian's Chromium driven by Playwright (no browser download),
WebGL through SwiftShader, against a real uvicorn server.

What a person would check: a real FLAIR uploaded through the page comes back with the mask drawn in the
label's colour where the tumour is (checked against the case's ground-truth label, through NiiVue's own
screen-to-millimetre mapping), a corrupt file shows the API's own error sentence, and nothing the page
loads leaves 127.0.0.1 (NiiVue is served by the app, not a CDN).
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
import SimpleITK as sitk

from app.api.routes.viewer import NIIVUE_FILE
from tests.conftest import BUNDLED_MODEL, REPO, Server, need, shared_case

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
# WebGL2 without a GPU: ANGLE on SwiftShader (--use-gl=swiftshader would disable WebGL). No background
# networking: Chromium would otherwise try Google's hosts at every start (../shared/FIELD-NOTES.md).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
]
# Two answers of the 2D model, then NiiVue's load and a SwiftShader render (~15 s on 2 idle cores; minutes
# when the cores are shared with other heavy jobs).
RENDER_TIMEOUT_MS = 600_000
SHOT_TIMEOUT_MS = 300_000
LABEL_RGB = np.array([230, 40, 40])  # the page's (and the PNG preview's) colour for the first label


@pytest.fixture(scope="module")
def chromium_path() -> Path:
    """Debian's Chromium, installed by the project's own script (idempotent); skip (fail under strict) if
    it cannot be had."""
    if not CHROMIUM.exists():
        done = subprocess.run(
            [str(REPO / "scripts" / "install_system_packages.sh"), "chromium"],
            capture_output=True,
            text=True,
            timeout=900,
        )
        need(done.returncode == 0, f"Chromium could not be installed with apt: {done.stderr.strip()[-400:]}")
    need(CHROMIUM.exists(), f"{CHROMIUM} is missing after installing the Debian package chromium")
    return CHROMIUM


@pytest.fixture(scope="module")
def browser(chromium_path: Path):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        need(False, "playwright is not installed (it is in the dev extra: scripts/bootstrap.sh serve,train,dev)")
    need(NIIVUE_FILE.is_file(), f"NiiVue is not installed at {NIIVUE_FILE}: run python3 scripts/install_niivue.py")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium_path), headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, server: Server):
    """A fresh page at ``GET /`` with every request it makes recorded in ``page.requested``."""
    context = browser.new_context(viewport={"width": 1280, "height": 1300}, device_scale_factor=1)
    page = context.new_page()
    page.requested = []
    page.on("request", lambda request: page.requested.append(request.url))
    page.goto(f"{server.url}/")
    page.wait_for_selector("body[data-state=ready]", timeout=30_000)
    page.select_option("#model-select", BUNDLED_MODEL)
    yield page
    context.close()


def _png(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(np.int16)


def _set_opacity(page, value: float) -> np.ndarray:
    """Move the opacity slider as a user would (an input event), let NiiVue redraw, screenshot the canvas.
    The canvas is read from a screenshot: WebGL does not preserve its drawing buffer for readPixels."""
    page.eval_on_selector(
        "#opacity", "(el, v) => { el.value = String(v); el.dispatchEvent(new Event('input')); }", value
    )
    page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
    box = page.locator("#viewer").bounding_box()
    return _png(page.screenshot(clip=box, timeout=SHOT_TIMEOUT_MS))


def _axial_tile(page) -> tuple[int, int, int, int]:
    """Left, top, width, height (canvas pixels) of NiiVue's axial tile in the multiplanar layout."""
    tiles = page.evaluate(
        "() => window.bratsViewer.nv.screenSlices"
        ".map(s => ({ltwh: Array.from(s.leftTopWidthHeight), kind: s.axCorSag}))"
    )
    axial = [t["ltwh"] for t in tiles if t["kind"] == 0]
    assert axial, f"no axial tile on screen: {tiles}"
    return tuple(int(round(v)) for v in axial[0])


def _ground_truth_at(page, pixels: np.ndarray, truth: sitk.Image) -> np.ndarray:
    """The ground-truth label (dilated by 2 voxels: the border of a good mask is a voxel or two off) under
    each canvas pixel ``(x, y)``, through NiiVue's canvas -> fraction -> RAS millimetre mapping."""
    mm_ras = page.evaluate(
        "(pts) => { const nv = window.bratsViewer.nv;"
        " return pts.map(([x, y]) => Array.from(nv.frac2mm(nv.canvasPos2frac([x + 0.5, y + 0.5])).slice(0, 3))); }",
        pixels.tolist(),
    )
    dilated = sitk.BinaryDilate(truth > 0, [2, 2, 2])
    size = np.array(truth.GetSize())
    found = []
    for x, y, z in mm_ras:
        index = np.array(truth.TransformPhysicalPointToIndex((-x, -y, z)))  # RAS -> LPS (ITK)
        found.append(bool(((index >= 0) & (index < size)).all() and dilated[[int(i) for i in index]]))
    return np.array(found)


def test_page_and_its_library_are_served_by_the_app(server: Server):
    """Everything the page loads comes from this app, with the media types ES modules need."""
    need(NIIVUE_FILE.is_file(), f"NiiVue is not installed at {NIIVUE_FILE}: run python3 scripts/install_niivue.py")
    with server.client() as client:
        page = client.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert 'src="/web/viewer.js"' in page.text and "http" not in page.text.split("<body")[0]
        for path in ("/web/viewer.js", "/web/api.js", "/web/vendor/niivue/niivue.js"):
            answer = client.get(path)
            assert answer.status_code == 200, path
            assert answer.headers["content-type"].startswith(("text/javascript", "application/javascript")), path
        assert client.get("/web/vendor/niivue/niivue.js").content == NIIVUE_FILE.read_bytes()
        assert client.get("/web/%2e%2e/config.py").status_code == 404  # nothing outside app/web


def test_page_segments_a_real_flair_and_draws_the_mask_where_the_tumour_is(page, server: Server, tmp_path: Path):
    flair = shared_case("brats2018_deepvoxnet2", "case_6", "FLAIR.nii.gz")
    truth = sitk.ReadImage(str(shared_case("brats2018_deepvoxnet2", "case_6", "GT_W.nii.gz")), sitk.sitkUInt8)
    page.set_input_files("input[name=flair]", str(flair))
    page.click("#segment-button")
    page.wait_for_selector("body[data-state=rendered], body[data-state=error]", timeout=RENDER_TIMEOUT_MS)
    assert page.get_attribute("body", "data-state") == "rendered", page.inner_text("#error")

    # The volumes table is the JSON answer's (a whole-tumour model: one row).
    summary = page.evaluate("() => window.bratsViewer.answer.summary")
    assert summary["model"]["name"] == BUNDLED_MODEL
    row = page.inner_text("#volumes tbody tr:first-child")
    assert f"{summary['labels'][0]['volume_ml']:.1f}" in row and "whole tumour" in row
    assert 40 < summary["tumour_volume_ml"] < 140, summary["tumour_volume_ml"]  # truth: 87 mL

    shown, hidden = _set_opacity(page, 1.0), _set_opacity(page, 0.0)
    left, top, width, height = _axial_tile(page)
    changed = np.abs(shown - hidden).sum(axis=2) > 60
    tile = np.zeros_like(changed)
    tile[top : top + height, left : left + width] = True
    ys, xs = np.nonzero(changed & tile)
    assert len(xs) > 300, f"the mask changed only {len(xs)} pixels of the axial view"
    colours = shown[ys, xs]
    assert np.abs(np.median(colours, axis=0) - LABEL_RGB).max() < 40, f"mask pixels are {np.median(colours, axis=0)}"
    rng = np.random.default_rng(0)
    sample = rng.choice(len(xs), size=min(400, len(xs)), replace=False)
    inside = _ground_truth_at(page, np.stack([xs[sample], ys[sample]], axis=1), truth)
    assert inside.mean() > 0.85, f"only {inside.mean():.0%} of the drawn mask pixels lie on the true tumour"
    # ...and where the slider hides the mask, the same pixels are grey again (the overlay, not the image).
    grey = hidden[ys, xs]
    assert (np.abs(grey[:, 0] - grey[:, 1]) < 8).mean() > 0.95

    _set_opacity(page, 0.6)
    shot = page.screenshot(full_page=True, timeout=SHOT_TIMEOUT_MS)
    (tmp_path / "viewer.png").write_bytes(shot)
    keep = os.environ.get("SEG_VIEWER_SCREENSHOT")  # e.g. docs/viewer.png, to refresh the README's picture
    if keep:
        shutil.copyfile(tmp_path / "viewer.png", keep)
    _assert_loopback_only(page.requested, server)


def test_page_shows_the_api_error_sentence_for_a_corrupt_file(page, server: Server, tmp_path: Path):
    flair = shared_case("brats2018_deepvoxnet2", "case_6", "FLAIR.nii.gz")
    corrupt = tmp_path / "FLAIR.nii.gz"
    corrupt.write_bytes(flair.read_bytes()[:200_000])  # a real header, then the download broke off
    with server.client() as client, corrupt.open("rb") as fh:
        answer = client.post("/segment", params={"model": BUNDLED_MODEL, "format": "json"}, files={"flair": fh})
    assert answer.status_code == 400, answer.text
    detail = answer.json()["detail"]

    page.set_input_files("input[name=flair]", str(corrupt))
    page.click("#segment-button")
    page.wait_for_selector("body[data-state=error]", timeout=60_000)
    assert page.inner_text("#error") == detail
    assert page.is_hidden("#result")
    _assert_loopback_only(page.requested, server)


def test_page_says_how_to_install_niivue_when_it_is_missing(browser, server: Server, tmp_path: Path):
    """Without the vendored library the page must explain itself, not break: simulated by refusing the
    library's URL in the browser (the server's files are left alone)."""
    context = browser.new_context()
    page = context.new_page()
    page.route("**/web/vendor/niivue/**", lambda route: route.fulfill(status=404, body="not found"))
    page.goto(f"{server.url}/")
    page.wait_for_selector("#model-select:not([disabled])", timeout=30_000)
    message = page.inner_text("#error")
    assert "NiiVue" in message and "scripts/install_niivue.py" in message
    assert not page.is_disabled("#segment-button")
    context.close()


def _assert_loopback_only(urls: list[str], server: Server) -> None:
    assert urls, "the page made no requests at all"
    outside = [u for u in urls if urlsplit(u).scheme not in ("blob", "data") and urlsplit(u).hostname != "127.0.0.1"]
    assert not outside, f"requests left 127.0.0.1: {outside}"
    assert any(u.endswith("/web/vendor/niivue/niivue.js") for u in urls), "NiiVue was not loaded from this server"
