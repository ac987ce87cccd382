#!/bin/sh
# The retraining job of the `train` image: convert the labelled cases that $TRAIN_CONFIG names, found under
# /data (mounted read-only from TRAIN_DATA, see docker-compose.yml), into shards, train, and publish the
# next version into /srv/models (training.export: atomic rename, validation Dice in the model card). The
# service promotes it only if it passes the quality gate (README "Retrain and hot-swap").
#
# Signals: the steps run as children of this shell, which forwards SIGTERM/SIGINT to the running one and
# exits with its status, so `docker stop` ends a job at once (PID 1 ignores signals it has no handler for).
#   docker compose --profile train run --rm train                      # TRAIN_CONFIG from the image
#   docker compose --profile train run --rm -e TRAIN_CONFIG=/cfg/x.toml -v ./x.toml:/cfg/x.toml:ro train
# Extra arguments are passed to training.train (for example --epochs 2).
set -eu
config="${TRAIN_CONFIG:?TRAIN_CONFIG must name a training config (TOML)}"
data=/data
child=""
# No step running yet (or between steps): stop here, as the default action would.
trap 'if [ -n "$child" ]; then kill -TERM "$child" 2>/dev/null || true; else exit 143; fi' TERM INT

run() {
  "$@" &
  child=$!
  # wait returns early when a trapped signal arrives; wait again for the child to finish its exit.
  status=0
  wait "$child" || status=$?
  while kill -0 "$child" 2>/dev/null; do wait "$child" || status=$?; done
  child=""
  return "$status"
}

if [ ! -f "$config" ]; then
  echo "train: no training config at $config (TRAIN_CONFIG)" >&2
  exit 2
fi
if [ ! -d "$data" ] || [ -z "$(ls -A "$data" 2>/dev/null)" ]; then
  echo "train: $data is empty: set TRAIN_DATA to the folder of labelled cases (e.g. ../shared/data) and mount it" >&2
  exit 2
fi
# The case ids of the config (train + validation), one per line: only those are converted.
case_ids="$(python - "$config" <<'EOF'
import sys, tomllib
d = tomllib.load(open(sys.argv[1], "rb"))["data"]
print("\n".join(d["train"] + d["validation"]))
EOF
)"
cases=""
for case_id in $case_ids; do
  found="$(find "$data" -mindepth 1 -maxdepth 3 -type d -name "$case_id" | head -n 1)"
  if [ -z "$found" ]; then
    echo "train: case $case_id of $config is not under $data" >&2
    exit 2
  fi
  cases="$cases $found"
done
# --config: shards made with the config's grid, modalities and target (training checks they match).
# shellcheck disable=SC2086  # one argument per case folder
run python -m training.convert $cases --config "$config"
run python -m training.train --config "$config" --quiet "$@"
