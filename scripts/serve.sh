#!/usr/bin/env bash
# Install the serving dependencies, then start the service (python -m app) on the bundled model.
# Settings come from SEG_* environment variables (see the README).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh serve,brain
exec .venv/bin/python -m app "$@"
