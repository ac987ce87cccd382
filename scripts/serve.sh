#!/usr/bin/env bash
# Install the serving dependencies (with OpenVINO, one of SEG_BACKEND=auto's candidates), then start the
# service (python -m app) on the bundled models.
# Settings come from SEG_* environment variables (see the README).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh serve,brain,openvino
exec .venv/bin/python -m app "$@"
