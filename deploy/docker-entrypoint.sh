#!/bin/sh
# Seed an empty models volume with the bundled model, then run the command (python -m app).
# A model directory that already exists in the volume (for instance with retrained versions) is never
# touched. The copy is made under a hidden name and renamed, so a poller (this service's, TF Serving's)
# never sees half a model; two containers seeding at once cannot both win the rename.
set -eu
bundled="${BUNDLED_MODELS_DIR:-/srv/bundled-models}"
models="${SEG_MODELS_DIR:-/srv/models}"
if [ -d "$bundled" ] && [ -w "$models" ]; then
  for src in "$bundled"/*/; do
    name="$(basename "$src")"
    if [ ! -e "$models/$name" ]; then
      tmp="$models/.seed-$name-$$"
      cp -a "$src" "$tmp"
      mv -T "$tmp" "$models/$name" 2>/dev/null || rm -rf "$tmp"
      echo "seeded $models/$name from the image" >&2
    fi
  done
fi
exec "$@"
