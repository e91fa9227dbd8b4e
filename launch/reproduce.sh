#!/usr/bin/env bash
# Levi & Hassner (2015) reproduced in one command on a real Adience download: set-up, records
# with the paper's labels and aligned faces, then its five folds with its solver
# (--recipe=paper: batch 50 on one device, 50,000 steps), each fold's final checkpoint tested
# with the center crop and with 10 crops, and our table printed beside the published one.
#
#   bash launch/reproduce.sh ~/data/adience
#   bash launch/reproduce.sh ~/data/adience --folds=0 --steps=5000     # a shorter look
#   REPRODUCE_NP=2 bash launch/reproduce.sh ~/data/adience              # 2 Horovod processes
#
# ADIENCE_DIR holds fold_0_data.txt .. fold_4_data.txt and aligned/ (the download, unpacked).
# Flags after it go to trainer.cross_validate and override the defaults below. Before the
# first fold trains, a few steps are timed and the expected total time on this machine is
# printed. A rerun reuses the records (when they verify and were built from the same
# ADIENCE_DIR) and resumes the folds where they stopped.
# Knobs (environment): REPRODUCE_DIR (runs/reproduce), REPRODUCE_NP (1 process, as the paper's
# one GPU), REPRODUCE_TIME_STEPS (20; 0: no estimate), REPRODUCE_IMAGE_SIZE (256, the paper's).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
usage="usage: bash launch/reproduce.sh ADIENCE_DIR [flags of trainer.cross_validate]"
adience_dir=${1:-}
if [ -z "$adience_dir" ]; then
  echo "$usage" >&2
  echo "error: no ADIENCE_DIR given: the Adience download, with fold_0_data.txt and aligned/" >&2
  exit 2
fi
if [ ! -f "$adience_dir/fold_0_data.txt" ] || [ ! -d "$adience_dir/aligned" ]; then
  echo "$usage" >&2
  echo "error: ADIENCE_DIR $adience_dir is not an Adience download: it needs fold_0_data.txt" \
    "and aligned/" >&2
  exit 2
fi
shift
adience_dir=$(cd "$adience_dir" && pwd)
run_dir=${REPRODUCE_DIR:-$root/runs/reproduce}
records=$run_dir/records
model_dir=$run_dir/cv
image_size=${REPRODUCE_IMAGE_SIZE:-256}

bash "$root/launch/setup.sh"
cd "$root"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
python=$root/.venv/bin/python

step() { echo; echo "== $*"; }
# TensorFlow prints a few lines at import, before it reads TF_CPP_MIN_LOG_LEVEL.
tf_quiet() { "$@" 2> >(grep -v -e '^WARNING: All log messages before absl' -e '^I0000 ' >&2); }

# Records to reuse: the paper's labels, layout and folds at this size, from this download.
records_built_here() {
  [ -f "$records/manifest.json" ] && "$python" - "$records/manifest.json" "$adience_dir" \
    "$image_size" <<'EOF'
import json, sys
settings = json.load(open(sys.argv[1]))["settings"]
wanted = {"source": sys.argv[2], "image_size": int(sys.argv[3]), "task": "age",
          "age_labels": "paper", "layout": "aligned", "protocol": "folds"}
sys.exit(any(settings.get(key) != value for key, value in wanted.items()))
EOF
}

step "TFRecords of the paper's 5 folds (paper labels, aligned faces, ${image_size}x${image_size}): $records"
if records_built_here && tf_quiet "$python" -m input.verify "$records" >/dev/null; then
  echo "reusing them: built from $adience_dir, every shard agrees with the manifest"
else
  if [ -d "$model_dir" ]; then
    # Its folds were trained on the records about to be replaced: resuming them would mix two
    # data sets in one table.
    echo "error: $model_dir holds folds trained on other records than the ones needed now;" \
      "move it away (or set REPRODUCE_DIR) and run this again" >&2
    exit 2
  fi
  [ ! -d "$records" ] || echo "the records there are of another source or size, or damaged" \
    "or unfinished: building them again"
  rm -rf "$records"
  tf_quiet "$python" -m input.build --adience_dir "$adience_dir" --out_dir "$records" \
    --age_labels=paper --layout=aligned --protocol=folds --image_size "$image_size" \
    --workers "$(nproc)"
fi

# The loop's per-epoch evaluations use the center crop (add --eval_crops=10 to make them 10-crop,
# at 10x their cost); the table's 10-crop figures come from each fold's final evaluation.
step "The paper's 5 folds: Levi & Hassner's network and solver, ${REPRODUCE_NP:-1} process(es)"
bash "$root/launch/single_node.sh" --np "${REPRODUCE_NP:-1}" --module=trainer.cross_validate \
  --records="$records" --model_dir="$model_dir" --model=levi_hassner --recipe=paper \
  --time_steps="${REPRODUCE_TIME_STEPS:-20}" "$@"

step "Written"
echo "records and manifest:   $records"
echo "checkpoints:            $model_dir/fold<k>/checkpoints (run.json, metrics.jsonl beside)"
echo "TensorBoard:            .venv/bin/tensorboard --logdir $model_dir"
if [ -f "$model_dir/cross_validation.json" ]; then
  echo "the table's figures:    $model_dir/cross_validation.json"
else
  echo "stopped before the last fold ended: run the same command again to resume"
fi
