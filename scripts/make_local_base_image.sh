#!/usr/bin/env bash
# Make a local stand-in for `python:3.11-slim-bookworm` when no container registry can be reached, and
# load it into the Docker daemon that DOCKER_HOST points at (default: the system's).
#
#   scripts/make_local_base_image.sh [TAG]        # default TAG: brats-serve-base:py3.11-bookworm
#   docker build --build-arg PYTHON_IMAGE=brats-serve-base:py3.11-bookworm .
#
# What it is: Debian bookworm (debootstrap --variant=minbase, from the same Debian mirror apt uses here)
# with Debian's Python 3.11 and a virtual environment at /usr/local, so `python` and `pip` resolve to
# /usr/local/bin as in the official image. Debian's python3 has no pip and is "externally managed"; the
# venv is what makes `pip install` work as it does in the official image.
#
# Machine-specific on purpose: this machine's pip index settings (http(s) only) and CA certificates are
# baked in, so that `pip install` inside a build reaches the same package index the host does. That is
# why this image is only ever made locally and used through the PYTHON_IMAGE build-arg: the project's
# Dockerfile keeps the official image as its default and carries none of this.
#
# Needs: root, debootstrap (scripts/install_system_packages.sh debootstrap), a running dockerd.
# Takes about a minute (debootstrap 45 s). Idempotent: an existing TAG is kept unless FORCE=1.
set -euo pipefail
tag="${1:-brats-serve-base:py3.11-bookworm}"
docker_bin="${DOCKER:-docker}"
if [ -z "${FORCE:-}" ] && "$docker_bin" image inspect "$tag" >/dev/null 2>&1; then
  exit 0
fi
command -v debootstrap >/dev/null || { echo "make_local_base_image: debootstrap is not installed" >&2; exit 1; }

# The Debian mirror apt already uses (deb822 or one-line format), so no other host is contacted.
mirror="$(grep -hoE '^URIs:[[:space:]]*\S+' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' \
  | grep -v security | head -n1 || true)"
if [ -z "$mirror" ]; then
  mirror="$(grep -hoE '^deb[[:space:]]+\S+' /etc/apt/sources.list 2>/dev/null | awk '{print $2}' | head -n1 || true)"
fi
mirror="${mirror:-http://deb.debian.org/debian}"

work="$(mktemp -d "${TMPDIR:-/tmp}/seg-base.XXXXXX")"
trap 'rm -rf "$work"' EXIT
root="$work/rootfs"
start=$(date +%s)
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
  bookworm "$root" "$mirror" >"$work/debootstrap.log" 2>&1 \
  || { tail -n 20 "$work/debootstrap.log" >&2; echo "make_local_base_image: debootstrap failed" >&2; exit 1; }

# The host's CA bundle (it may hold the CA of a TLS-intercepting proxy) and its http(s) index settings.
host_ca="${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}"
[ -f "$host_ca" ] && cp "$host_ca" "$root/etc/ssl/certs/ca-certificates.crt"
{
  echo "[global]"
  echo "cert = /etc/ssl/certs/ca-certificates.crt"
  for key in index-url extra-index-url; do
    value="$(pip config get "global.$key" 2>/dev/null || true)"
    value="$(printf '%s\n' $value | grep -E '^https?://' | tr '\n' ' ' || true)"
    [ -n "${value// /}" ] && echo "$key = $value"
  done
} >"$root/etc/pip.conf"

# A venv at /usr/local: python, pip at /usr/local/bin like the official image.
chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin /usr/bin/python3 -m venv /usr/local
chroot "$root" /usr/local/bin/python -m pip --version >/dev/null
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
  "$root"/var/log/* "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/root/.cache

tar --numeric-owner -C "$root" -c . | "$docker_bin" import \
  --change 'ENV LANG=C.UTF-8' \
  --change 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'CMD ["python3"]' \
  - "$tag" >/dev/null
echo "make_local_base_image: $tag made in $(( $(date +%s) - start )) s from $mirror" >&2
