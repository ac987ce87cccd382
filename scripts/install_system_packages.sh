#!/usr/bin/env bash
# Install Debian packages that tests or the service need (Orthanc, Chromium, docker.io, dicom3tools, ...)
# with apt-get, idempotently: packages already installed cost nothing, and `apt-get update` runs at most
# once per call and only when something is missing.
#   scripts/install_system_packages.sh orthanc orthanc-dicomweb dicom3tools
# Exit code 0 when every package is installed afterwards; non-zero (with the reason on stderr) otherwise,
# so that callers can skip, or under SEG_TEST_STRICT=1 fail, with that reason.
set -euo pipefail
missing=()
for pkg in "$@"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[ "${#missing[@]}" -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null; then
  echo "install_system_packages: no apt-get on this machine; install by hand: ${missing[*]}" >&2
  exit 1
fi
sudo_cmd=""
[ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
$sudo_cmd apt-get -o DPkg::Lock::Timeout=600 update -qq
DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install_system_packages: installed ${missing[*]}"
