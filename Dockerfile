# brats-serve images (CPU only).
#   docker build -t brats-serve .                        # the service (default target `serve`)
#   docker build -t brats-serve-train --target train .   # the retraining job (docker-compose profile `train`)
# Both run as uid:gid 10001:10001 (`seg`, home /home/seg) and read/write models under /srv/models.
# Where no registry can be reached, build on a local base: scripts/make_local_base_image.sh, then
#   docker build --build-arg PYTHON_IMAGE=brats-serve-base:py3.11-bookworm .   (deploy/README.md)
# Dependencies are installed from the lock files in deploy/lock/ (exact versions, no resolution at build
# time), so two builds of the same commit install the same packages and `pip check` passes.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- dependencies of the service only (no training, no dev tools) -------------------------------------
FROM ${PYTHON_IMAGE} AS deps
# tensorflow-serving-api: only its generated gRPC/protobuf modules are needed (TF Serving backend, warm-up
# records). Its metadata requires the full `tensorflow` wheel (570 MB) where `tensorflow-cpu` provides the
# same modules, so the wheel (pinned by hash) is unpacked into site-packages instead of pip-installed.
ARG TFSERVING_API_WHEEL=tensorflow_serving_api-2.21.0-py2.py3-none-any.whl
ARG TFSERVING_API_SHA256=8f0c45be6e1a9c034dd3be63d73d09b1a899cf5a66d9caa1d557f137c2eff51d
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_PROGRESS_BAR=off \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONPATH=/srv \
    HOME=/home/seg
RUN groupadd --system --gid 10001 seg \
 && useradd --system --uid 10001 --gid 10001 --home-dir /home/seg --create-home --shell /usr/sbin/nologin seg
WORKDIR /srv
COPY deploy/lock/serve.txt /tmp/lock/serve.txt
# The lock is complete (scripts/lock_image_requirements.sh), hence --no-deps; `pip check` proves it.
RUN pip install --no-deps -r /tmp/lock/serve.txt \
 && pip download --no-deps --only-binary=:all: --dest /tmp/tfs "tensorflow-serving-api==2.21.0" \
 && printf '%s  %s\n' "${TFSERVING_API_SHA256}" "/tmp/tfs/${TFSERVING_API_WHEEL}" >/tmp/tfs/SHA256SUMS \
 && sha256sum --check --quiet /tmp/tfs/SHA256SUMS \
 && python -m zipfile -e "/tmp/tfs/${TFSERVING_API_WHEEL}" /tmp/tfs/unpacked \
 && cp -r /tmp/tfs/unpacked/tensorflow_serving "$(python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/" \
 && rm -rf /tmp/tfs /tmp/lock \
 && pip check \
 && python -c "import tensorflow_serving.apis.prediction_service_pb2_grpc"

# ---- retraining job: converts cases, trains, publishes the next version into /srv/models -------------
FROM deps AS train
COPY deploy/lock/train.txt /tmp/lock/train.txt
RUN pip install --no-deps -r /tmp/lock/train.txt && rm -rf /tmp/lock && pip check
# No code is built or installed: the packages are plain source on PYTHONPATH (/srv), nothing left behind.
COPY segcore/ segcore/
COPY training/ training/
COPY deploy/train-entrypoint.sh /usr/local/bin/train-entrypoint.sh
RUN mkdir -p /srv/models /srv/data /srv/runs && chown 10001:10001 /srv/models /srv/data /srv/runs
# Progress bars are for terminals; container logs get one line per epoch (training.train --quiet).
ENV TQDM_DISABLE=1 \
    TF_ENABLE_ONEDNN_OPTS=1 \
    TF_CPP_MIN_LOG_LEVEL=1 \
    TRAIN_CONFIG=training/configs/brats-wt-flair.toml
USER 10001:10001
ENTRYPOINT ["train-entrypoint.sh"]

# ---- the service (default target) ---------------------------------------------------------------------
FROM deps AS serve
COPY segcore/ segcore/
COPY app/ app/
# The viewer page's NiiVue, pinned and hash-checked from the npm registry (no Node.js needed in the image).
COPY scripts/install_niivue.py scripts/
RUN python scripts/install_niivue.py && rm -r scripts
# Every bundled model, kept outside the models volume; the entrypoint copies each in when the volume
# lacks it. deploy/tfserving/models.config lists exactly these (tests/deploy checks it).
COPY models/ /srv/bundled-models/
# The skull stripper's networks (deepbet 1.0.2), converted to OpenVINO outside the image so that it has
# neither torch (750 MB) nor deepbet: deploy/brain-networks/README.md. Without them, a head with its skull
# is answered 422 skull_stripper_unavailable; already-stripped inputs are served as usual.
COPY deploy/brain-networks/ /srv/brain-networks/
COPY deploy/docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
# SEG_BACKEND=auto (the default) also tries OpenVINO, which converts each SavedModel first; the bundled
# models are converted here, once, into SEG_CACHE_DIR (keyed by content: a version published later is
# converted on its first load and kept there too; mount a volume on it, as compose does, to keep those).
ENV SEG_CACHE_DIR=/srv/cache
RUN mkdir -p /srv/models /srv/jobs /tmp/seg /srv/cache \
 && python -m app.cli.prepare_openvino /srv/bundled-models \
 && chown -R 10001:10001 /srv/models /srv/jobs /tmp/seg /srv/cache
# Settings (SEG_*, see the README) and CPU threading. TensorFlow sizes its pools once, at its first op:
# SEG_INTRA_OP_THREADS unset means every CPU of the container's cpuset (TensorFlow reads the affinity
# mask, not a --cpus quota: pin with cpuset, or set SEG_INTRA_OP_THREADS). A U-Net is a chain of ops,
# so one inter-op thread. oneDNN is on (TensorFlow's x86 default, made explicit); stock TensorFlow's
# oneDNN runs on TensorFlow's own pool, so OMP_NUM_THREADS/KMP_* only matter for OpenMP builds.
# Measure with benchmarks/ before changing any of these (deploy/README.md).
ENV SEG_HOST=0.0.0.0 \
    SEG_PORT=8000 \
    SEG_MODELS_DIR=/srv/models \
    SEG_TMP_DIR=/tmp/seg \
    SEG_JOBS_DIR=/srv/jobs \
    SEG_INTER_OP_THREADS=1 \
    SEG_MAX_CONCURRENT_INFERENCES=1 \
    TF_ENABLE_ONEDNN_OPTS=1 \
    TF_CPP_MIN_LOG_LEVEL=1 \
    BUNDLED_MODELS_DIR=/srv/bundled-models \
    SEG_BRAIN_NETWORKS_DIR=/srv/brain-networks/deepbet-openvino
USER 10001:10001
EXPOSE 8000
# Ready, not merely alive: /readyz answers 200 only once a model version is loaded and warmed.
HEALTHCHECK --interval=10s --timeout=5s --start-period=180s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('SEG_PORT', '8000'), timeout=4)"]
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["python", "-m", "app"]
