#!/usr/bin/env bash
# Install everything the tests need, then run the whole suite. Pytest's exit code 5 ("no tests
# collected") is an error here: an empty selection must never pass.
set -uo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh serve,train,dev,brain || exit 1
# Horovod (CPU, Gloo) is built from source against the installed TensorFlow; a stamp makes reruns free.
scripts/install_horovod.sh || exit 1
# TensorFlow at the release of compose's TF Serving image, for tests/deploy/test_tfserving_version.py.
scripts/install_tfserving_check.sh || exit 1
# The container smoke test (tests/deploy/test_container.py) runs a private dockerd and may build its base
# image with debootstrap. Its fixture installs these too; where they cannot be installed it skips (fails
# under CI) with the reason.
scripts/install_system_packages.sh docker.io debootstrap || echo "test.sh: docker.io/debootstrap not installed" >&2
# Under CI a missing component fails the run instead of skipping (tests/conftest.py: need()).
if [ "${CI:-}" = "true" ] || [ "${CI:-}" = "1" ]; then
  export SEG_TEST_STRICT="${SEG_TEST_STRICT:-1}"
fi
.venv/bin/python -m pytest "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: failing" >&2
  exit 1
fi
exit "$rc"
