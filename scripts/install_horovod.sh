#!/usr/bin/env bash
# Build and install Horovod (CPU, Gloo, TensorFlow only) into .venv, reproducibly and idempotently.
#
# Why a script and not a plain `pip install horovod`: the Horovod 0.28.1 sdist does not compile against
# TensorFlow 2.21 because horovod/tensorflow/xla_mpi_ops.cc includes XLA headers that the TF wheel does
# not ship. That file is GPU-only (its whole body is under HAVE_GPU), so it is dropped from the CMake
# source list before building. Everything else is Horovod's own build, unmodified.
#
# A stamp in .venv records the Horovod and TensorFlow versions it was built against; reruns with the same
# versions return at once. Build time on 2 cores: about 4 minutes.
#   scripts/install_horovod.sh            # build if needed
#   FORCE=1 scripts/install_horovod.sh    # rebuild
set -euo pipefail
cd "$(dirname "$0")/.."
HOROVOD_VERSION="${HOROVOD_VERSION:-0.28.1}"
py=.venv/bin/python
if [ ! -x "$py" ]; then
  echo "install_horovod: .venv missing; run scripts/bootstrap.sh serve,train,dev first" >&2
  exit 1
fi
tf_version="$("$py" -c 'import importlib.metadata as m; print(m.version("tensorflow-cpu"))')"
stamp=".venv/.installed-horovod-${HOROVOD_VERSION}-tf${tf_version}"
# The stamp alone is not trusted: the compiled TensorFlow op library must still be there (a check
# that does not import TensorFlow, which would cost ~10 s on every test run).
if [ -f "$stamp" ] && [ -z "${FORCE:-}" ] && compgen -G ".venv/lib/python3*/site-packages/horovod/tensorflow/mpi_lib*.so" >/dev/null; then
  exit 0
fi

# Compilers: Debian/Ubuntu images without them get them from apt (CI runs as root).
if ! command -v cmake >/dev/null || ! command -v g++ >/dev/null; then
  if command -v apt-get >/dev/null; then
    sudo_cmd=""
    [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq cmake g++ make >/dev/null
  else
    echo "install_horovod: cmake and g++ are required" >&2
    exit 1
  fi
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
start=$(date +%s)
"$py" -m pip download --quiet --no-deps --no-binary :all: "horovod==${HOROVOD_VERSION}" -d "$work"
tar -xzf "$work/horovod-${HOROVOD_VERSION}.tar.gz" -C "$work"
src="$work/horovod-${HOROVOD_VERSION}"
cmake_tf="$src/horovod/tensorflow/CMakeLists.txt"
grep -q 'xla_mpi_ops.cc' "$cmake_tf" || { echo "install_horovod: xla_mpi_ops.cc not in $cmake_tf; patch is stale" >&2; exit 1; }
sed -i '/xla_mpi_ops\.cc/d' "$cmake_tf"

# Horovod's build needs TensorFlow importable, hence no build isolation; its small runtime deps
# (cloudpickle, psutil, pyyaml, cffi) come from its own metadata.
"$py" -m pip install --quiet wheel "setuptools<81" cffi
HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1 HOROVOD_WITHOUT_MPI=1 \
  HOROVOD_WITH_GLOO=1 HOROVOD_CPU_OPERATIONS=gloo MAKEFLAGS="-j${HOROVOD_BUILD_JOBS:-$(nproc)}" \
  "$py" -m pip install --quiet --no-build-isolation --no-cache-dir "$src"
"$py" -c 'import horovod.tensorflow as hvd; assert hvd.gloo_built(), "Horovod built without Gloo"'
rm -f .venv/.installed-horovod-*
touch "$stamp"
echo "install_horovod: Horovod ${HOROVOD_VERSION} built for TensorFlow ${tf_version} in $(( $(date +%s) - start )) s"
