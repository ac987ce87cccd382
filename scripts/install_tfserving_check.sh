#!/usr/bin/env bash
# A separate venv, .venv-tfserving/, with the TensorFlow release that docker-compose.yml's TF Serving image
# is built on (tensorflow/serving:X.Y.Z links TensorFlow X.Y.Z), for deploy/tfserving/check_savedmodels.py:
# do our SavedModels load and run in that release (op set, op attributes, graph-mode loader)?
# Idempotent: a stamp names the version; a changed TFSERVING_TAG default in the compose file reinstalls.
#   scripts/install_tfserving_check.sh            # version from docker-compose.yml
#   TF_VERSION=2.19.0 scripts/install_tfserving_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
version="${TF_VERSION:-$(sed -nE 's/.*tensorflow\/serving:\$\{TFSERVING_TAG:-([0-9.]+)\}.*/\1/p' docker-compose.yml | head -n1)}"
[ -n "$version" ] || { echo "install_tfserving_check: no TFSERVING_TAG default in docker-compose.yml" >&2; exit 1; }
venv=.venv-tfserving
stamp="$venv/.installed-tensorflow-cpu-$version"
[ -f "$stamp" ] && [ -x "$venv/bin/python" ] && exit 0
python_bin="${PYTHON:-$(command -v python3.11 || command -v python3)}"
rm -rf "$venv"
"$python_bin" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet "tensorflow-cpu==$version"
touch "$stamp"
echo "install_tfserving_check: tensorflow-cpu $version in $venv"
