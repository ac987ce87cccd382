#!/usr/bin/env bash
# Create .venv at the repo root and install the project with the given extras (idempotent: a stamp
# file per extras set is refreshed only when pyproject.toml changes).
#   scripts/bootstrap.sh serve,brain          # what `make serve` needs
#   scripts/bootstrap.sh serve,train,dev,brain  # what `make test` needs
# The serve extra also fetches NiiVue for the page at GET / (scripts/install_niivue.py); the brain extra
# converts the skull stripper's networks.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-serve}"
python_bin="${PYTHON:-$(command -v python3.11 || command -v python3)}"
if [ ! -x .venv/bin/python ]; then
  "$python_bin" -m venv .venv
fi
stamp=".venv/.installed-${extras//,/-}"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e ".[${extras}]"
  # tensorflow-serving-api pins the 570 MB `tensorflow` wheel; its real needs (grpcio, protobuf) come
  # with tensorflow-cpu, so it is installed without dependencies.
  .venv/bin/python -m pip install --quiet --no-deps "tensorflow-serving-api==2.21.*"
  touch "$stamp"
fi
# The viewer page's JavaScript library (NiiVue), pinned and hash-checked, into app/web/vendor/ (own stamp).
if [[ ",${extras}," == *",serve,"* ]]; then
  .venv/bin/python scripts/install_niivue.py
fi
# The skull stripper's networks, converted once from deepbet's TorchScript to OpenVINO (idempotent).
if [[ ",${extras}," == *",brain,"* ]]; then
  .venv/bin/python -m segcore.preprocess.prepare_networks >/dev/null
fi
