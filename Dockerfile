# syntax=docker/dockerfile:1
# brats-serve images (CPU only).
#   docker build -t brats-serve .                        # the service (default target `serve`)
#   docker build -t brats-serve-train --target train .   # the retraining job (docker-compose profile `train`)
# Both run as the unprivileged user `seg` (uid 10001) and read/write models under /srv/models.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- dependencies of the service only (no training, no dev tools) -------------------------------------
FROM ${PYTHON_IMAGE} AS deps
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN groupadd --system --gid 10001 seg \
 && useradd --system --uid 10001 --gid seg --home-dir /srv --no-create-home --shell /usr/sbin/nologin seg
WORKDIR /srv
COPY pyproject.toml ./
# Dependencies first, from pyproject.toml itself, so a code change does not reinstall TensorFlow.
# The `openvino` extra is included so SEG_BACKEND=openvino (the fastest backend measured, see README) works.
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + p['optional-dependencies']['serve'] + p['optional-dependencies']['openvino']))" \
    > /tmp/serve.txt \
 && pip install -r /tmp/serve.txt \
 # tensorflow-serving-api pins the full `tensorflow` wheel; grpcio and protobuf come with tensorflow-cpu.
 && pip install --no-deps "tensorflow-serving-api==2.21.*" \
 && rm /tmp/serve.txt

# ---- retraining job: converts cases, trains, publishes the next version into /srv/models -------------
FROM deps AS train
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['optional-dependencies']['train']))" > /tmp/train.txt \
 && pip install -r /tmp/train.txt && rm /tmp/train.txt
COPY README.md ./
COPY segcore/ segcore/
COPY training/ training/
RUN pip install --no-deps . \
 && mkdir -p /srv/models /srv/data /srv/runs && chown seg:seg /srv/models /srv/data /srv/runs
USER seg
CMD ["python", "-m", "training.train", "--config", "training/configs/brats-wt-flair.toml"]

# ---- the service (default target) ---------------------------------------------------------------------
FROM deps AS serve
COPY README.md ./
COPY segcore/ segcore/
COPY app/ app/
RUN pip install --no-deps .
# The bundled model, kept outside the models volume; the entrypoint copies it in when the volume lacks it.
COPY models/brats-wt-flair/ /srv/bundled-models/brats-wt-flair/
COPY deploy/docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
RUN mkdir -p /srv/models /srv/jobs /tmp/seg && chown seg:seg /srv/models /srv/jobs /tmp/seg
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
    BUNDLED_MODELS_DIR=/srv/bundled-models
USER seg
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=90s --retries=3 \
  CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('SEG_PORT', '8000'), timeout=4)" || exit 1
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["python", "-m", "app"]
