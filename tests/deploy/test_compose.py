"""docker-compose.yml, the TF Serving config and the Dockerfile agree with each other and with the app.

No container engine runs here, so these files are checked as data: every ``SEG_*`` variable is a setting
the app defines (and validates), paths meet at the same volume, the gRPC port and model names match,
TF Serving keeps the versions the app may ask for. A typo in any of them fails here, not on the server.
"""

from __future__ import annotations

import os
import re
import shlex
import tomllib
from pathlib import PurePosixPath

import pytest
import yaml
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from app.config import Settings
from tests.conftest import REPO, shared_case

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
    assert env["SEG_BACKEND"] == "inprocess"
    assert env["SEG_MODELS_DIR"] == _volume_path("app")
    assert "models" in COMPOSE["volumes"]
    for service in APP_SERVICES:
        (mapping,) = SERVICES[service]["ports"]
        assert mapping.split(":")[-1] == _env(service)["SEG_PORT"], service
        assert _env(service)["SEG_HOST"] == "0.0.0.0"  # reachable through the published port
    host_ports = [SERVICES[s]["ports"][0].split(":")[0] for s in APP_SERVICES]
    assert len(set(host_ports)) == len(host_ports)
    # The default model is the one the image bundles.
    default_model = env["SEG_DEFAULT_MODEL"]
    serve = _dockerfile_stages()["serve"]
    assert any(i == "COPY" and args.startswith(f"models/{default_model}/") for i, args in serve)
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
    # Every bundled model is served by TF Serving too, so ?model=<name> works on both backends.
    bundled = {p.name for p in (REPO / "models").iterdir() if p.is_dir() and not p.name.startswith(".")}
    assert {m.name for m in models} == bundled


def test_the_train_profile_publishes_into_the_models_volume():
    train = SERVICES["train"]
    assert train["profiles"] == ["train"] and train["build"]["target"] == "train"
    assert "train" in _dockerfile_stages()
    command = " ".join(train["command"])
    (config_arg,) = re.findall(r"--config (\S+)", command)
    assert (REPO / config_arg).is_file()
    config = tomllib.loads((REPO / config_arg).read_text())
    workdir = next(args for i, args in _dockerfile_stages()["deps"] if i == "WORKDIR")
    # training.export writes <models_dir>/<name>/<version>/ relative to the working directory.
    models_dir = PurePosixPath(workdir) / config.get("models_dir", "models")
    assert _volume_path("train") == str(models_dir)
    assert config["name"] == _env("app")["SEG_DEFAULT_MODEL"]
    # The shards it converts are the ones the config trains on, on a volume, not in the image.
    (out,) = re.findall(r"--out (\S+)", command)
    assert out == config["data"]["shards"]
    assert any(str(PurePosixPath(workdir) / out).startswith(p) for p in _mounts("train"))
    shared = next(p for p, (source, ro) in _mounts("train").items() if ro)
    for root in re.findall(rf"{shared}/(\w+)", command):
        assert shared_case(root).is_dir()  # the folder the command names exists (or skip/fail through need())


def test_the_image_runs_the_service_unprivileged_with_a_health_check():
    stages = _dockerfile_stages()
    assert list(stages)[-1] == "serve"  # the default build target
    serve = stages["serve"]
    (healthcheck,) = [args for i, args in serve if i == "HEALTHCHECK"]
    assert "/healthz" in healthcheck and "SEG_PORT" in healthcheck
    users = [args for i, args in serve if i == "USER"]
    assert users and users[-1] not in ("root", "0")
    env = _dockerfile_env(serve)
    assert [args for i, args in serve if i == "EXPOSE"] == [env["SEG_PORT"]]
    assert env["TF_ENABLE_ONEDNN_OPTS"] in ("0", "1")
    copies = " ".join(args for i, args in serve if i == "COPY")
    assert "training" not in copies and "tests" not in copies  # app never imports training
    installs = " ".join(args for stage in ("deps", "serve") for i, args in stages[stage] if i == "RUN")
    assert "['serve']" in installs and "'train'" not in installs and "dev" not in installs
    assert "--no-deps" in installs and "tensorflow-serving-api" in installs  # the gRPC protos, not all of TF
    entrypoint = REPO / "deploy" / "docker-entrypoint.sh"
    assert entrypoint.is_file() and os.access(entrypoint, os.X_OK)
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".venv", ".git", "data/", "runs/"} <= set(ignored)


@pytest.mark.parametrize("path", ["docker-compose.yml", "deploy/tfserving/models.config"])
def test_deployment_files_name_no_host_specific_paths(path):
    text = (REPO / path).read_text()
    assert "/work/" not in text and "/home/" not in text
