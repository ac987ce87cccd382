"""A private Docker engine for the container tests, started and stopped by the test itself.

Debian's ``docker.io`` (dockerd 20.10) runs here when started by hand with no bridge, no iptables and no
IP forwarding, under its own data and exec roots and its own socket (FIELD-NOTES "Containers"): it then
touches neither the host's network nor another engineer's daemon. Containers run with the host's network
(loopback only) or none; no bridge network is ever created.

Cache: when ``/var/cache/brats-serve/docker`` (``SEG_DOCKER_CACHE``) can be created and locked, the engine
keeps its images there between runs (the local base image, the dependency layers of the builds), so a
second run rebuilds only what changed. Another run holding the lock, or a machine where the directory
cannot be made, gets a throw-away data root under the test's temporary directory: slower, same result.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import REPO

DOCKERD = "/usr/sbin/dockerd"
DOCKER = "/usr/bin/docker"  # Debian's client, the daemon's own version (not another client on PATH)
SYSTEM_PACKAGES = ("docker.io", "debootstrap")
CACHE_DIR = Path(os.environ.get("SEG_DOCKER_CACHE", "/var/cache/brats-serve/docker"))
OFFICIAL_BASE = "python:3.11-slim-bookworm"
LOCAL_BASE = "brats-serve-base:py3.11-bookworm"
DAEMON_FLAGS = (
    "--bridge=none",
    "--iptables=false",
    "--ip6tables=false",
    "--ip-forward=false",
    "--ip-masq=false",
)


def install_system_packages() -> str | None:
    """Install docker.io and debootstrap through the project's script; the reason on failure, else None."""
    if os.geteuid() != 0:
        return "a private dockerd needs root (run the container tests as root, as CI does)"
    result = subprocess.run(
        [str(REPO / "scripts" / "install_system_packages.sh"), *SYSTEM_PACKAGES],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if result.returncode != 0 or not (Path(DOCKERD).is_file() and Path(DOCKER).is_file()):
        return f"could not install {' '.join(SYSTEM_PACKAGES)}: {result.stderr.strip()[-500:]}"
    return None


def _lock_cache() -> tuple[Path, int] | None:
    """The cache's data root and its lock (an open fd), or None when it cannot be made or is in use."""
    try:
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        fd = os.open(CACHE_DIR / ".lock", os.O_CREAT | os.O_RDWR, 0o600)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return CACHE_DIR / "data-root", fd


@dataclass
class Engine:
    """One running dockerd; ``docker()`` and ``compose()`` talk to it only."""

    run_dir: Path  # exec root, socket, log: short path under /tmp (a unix socket path is <= 107 bytes)
    data_root: Path
    cached: bool
    process: subprocess.Popen
    lock_fd: int | None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def log_path(self) -> Path:
        return self.run_dir / "dockerd.log"

    def docker(self, *args: str, timeout: float = 600, check: bool = True, **kw) -> subprocess.CompletedProcess:
        """Run the docker client against this engine; output captured as text."""
        result = subprocess.run([DOCKER, *args], env=self.env, capture_output=True, text=True, timeout=timeout, **kw)
        if check and result.returncode != 0:
            raise RuntimeError(f"docker {' '.join(args[:3])} failed ({result.returncode}):\n{result.stderr[-3000:]}")
        return result

    def image_exists(self, ref: str) -> bool:
        return self.docker("image", "inspect", ref, check=False, timeout=60).returncode == 0

    def stop(self) -> None:
        """Stop the daemon by its PID (it stops its containers and its containerd), then remove what
        this run made: the exec root always, the data root unless it is the cache."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)
        # dockerd leaves a bind mount of the host's network namespace (exec/netns/default) behind.
        _unmount_under(self.run_dir)
        if not self.cached:
            _unmount_under(self.data_root)
            shutil.rmtree(self.data_root, ignore_errors=True)
        shutil.rmtree(self.run_dir, ignore_errors=True)
        if self.lock_fd is not None:
            os.close(self.lock_fd)  # releases the flock
            self.lock_fd = None


def start_engine(scratch: Path, timeout: float = 60) -> Engine:
    """Start dockerd on a private socket; wait (bounded) until it answers."""
    locked = _lock_cache()
    if locked is not None:
        data_root, lock_fd, cached = locked[0], locked[1], True
    else:
        data_root, lock_fd, cached = scratch / "docker-data", None, False
    data_root.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="seg-dk-", dir="/tmp"))
    sock = run_dir / "docker.sock"
    log = (run_dir / "dockerd.log").open("wb")
    process = subprocess.Popen(
        [
            DOCKERD,
            *DAEMON_FLAGS,
            f"--data-root={data_root}",
            f"--exec-root={run_dir / 'exec'}",
            f"--pidfile={run_dir / 'dockerd.pid'}",
            f"--host=unix://{sock}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    env.update(DOCKER_HOST=f"unix://{sock}", DOCKER_BUILDKIT="0", COMPOSE_BAKE="false")
    engine = Engine(run_dir, data_root, cached, process, lock_fd, env)
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            engine.stop()
            raise RuntimeError(f"dockerd exited ({process.returncode}):\n{_tail(run_dir / 'dockerd.log')}")
        if sock.exists() and engine.docker("version", check=False, timeout=10).returncode == 0:
            return engine
        if time.monotonic() > deadline:
            log_text = _tail(engine.log_path)
            engine.stop()
            raise RuntimeError(f"dockerd did not answer within {timeout} s:\n{log_text}")
        time.sleep(0.2)


def ensure_base_image(engine: Engine) -> str:
    """The image to build FROM: the official ``python:3.11-slim-bookworm`` when the engine has it (or
    ``SEG_DOCKER_PULL=1`` and a registry can be reached), else the local stand-in, made once per cache."""
    if engine.image_exists(OFFICIAL_BASE):
        return OFFICIAL_BASE
    if os.environ.get("SEG_DOCKER_PULL") == "1":
        if engine.docker("pull", "--quiet", OFFICIAL_BASE, check=False, timeout=300).returncode == 0:
            return OFFICIAL_BASE
    if not engine.image_exists(LOCAL_BASE):
        result = subprocess.run(
            [str(REPO / "scripts" / "make_local_base_image.sh"), LOCAL_BASE],
            env={**engine.env, "DOCKER": DOCKER},
            capture_output=True,
            text=True,
            timeout=900,
        )
        if result.returncode != 0:
            raise RuntimeError(f"could not make the local base image:\n{result.stderr[-3000:]}")
    return LOCAL_BASE


def build_image(engine: Engine, tag: str, target: str, base: str, timeout: float = 1200) -> float:
    """``docker build`` with the legacy builder (BuildKit needs buildx, absent here), host network for
    pip; returns seconds."""
    started = time.monotonic()
    engine.docker(
        "build",
        "--quiet",
        "--network=host",
        f"--build-arg=PYTHON_IMAGE={base}",
        f"--target={target}",
        f"--tag={tag}",
        str(REPO),
        timeout=timeout,
    )
    return time.monotonic() - started


def prune(engine: Engine) -> None:
    """Drop dangling images (earlier builds of changed layers) so the cache does not grow run after run."""
    engine.docker("image", "prune", "--force", check=False, timeout=300)


def _unmount_under(root: Path) -> None:
    """Unmount whatever is still mounted at or below ``root`` (deepest first), so it can be removed."""
    prefix = str(root.resolve())
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return
    points = [line.split()[4] for line in lines if len(line.split()) > 4]
    for point in sorted({p for p in points if p == prefix or p.startswith(prefix + "/")}, key=len, reverse=True):
        subprocess.run(["umount", "--lazy", point], capture_output=True, timeout=30)


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""
