#!/usr/bin/env bash
# Levi & Hassner (2015) reproduced in one command on a real Adience download: set-up, records
# with the paper's labels and aligned faces, then its five folds twice: with the paper's
# network and solver (--bundle=paper: batch 50 on one device, 50,000 steps), and with the
# improved bundle the time-to-accuracy races found (--bundle=improved, trainer.bundles). Each
# fold's final checkpoint is tested with the center crop and with 10 crops; both tables are
# printed beside the published one (50.7 +- 5.1 exact, 84.7 +- 2.2 1-off, over-sampled).
#
#   bash launch/reproduce.sh ~/data/adience
#   bash launch/reproduce.sh ~/data/adience --folds=0 --steps=5000     # a shorter look
#   REPRODUCE_NP=2 bash launch/reproduce.sh ~/data/adience              # 2 Horovod processes
#
# ADIENCE_DIR holds fold_0_data.txt .. fold_4_data.txt and aligned/ (the download, unpacked).
# Flags after it go to trainer.cross_validate for both protocols and override the bundles'
# settings. Before each protocol's first fold trains, a few of its steps are timed and its
# expected time on this machine is printed (on one GPU only as an assumption, said so). A
# rerun reuses the records (when they verify and were built from the same ADIENCE_DIR) and
# resumes the folds where they stopped.
# Knobs (environment): REPRODUCE_DIR (runs/reproduce), REPRODUCE_BUNDLES ("paper improved"),
# REPRODUCE_NP (1 process, as the paper's one GPU), REPRODUCE_TIME_STEPS (20; 0: no estimate),
# REPRODUCE_IMAGE_SIZE (256, the paper's).
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
image_size=${REPRODUCE_IMAGE_SIZE:-256}
read -r -a bundles <<< "${REPRODUCE_BUNDLES:-paper improved}"

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

# One line of a bundle's settings, or exit 2 naming an unknown one: before anything is built.
bundle_settings() {
  "$python" - "$1" <<'EOF'
import sys
from trainer import bundles
if sys.argv[1] not in bundles.BUNDLES:
    sys.exit(f"error: REPRODUCE_BUNDLES names {sys.argv[1]!r}; known bundles: "
             f"{', '.join(sorted(bundles.BUNDLES))}")
print(bundles.describe(bundles.BUNDLES[sys.argv[1]]))
EOF
}
for bundle in "${bundles[@]}"; do
  bundle_settings "$bundle" >/dev/null || exit 2
done

step "TFRecords of the paper's 5 folds (paper labels, aligned faces, ${image_size}x${image_size}): $records"
if records_built_here && tf_quiet "$python" -m input.verify "$records" >/dev/null; then
  echo "reusing them: built from $adience_dir, every shard agrees with the manifest"
else
  for bundle in "${bundles[@]}"; do
    if [ -d "$run_dir/$bundle" ]; then
      # Its folds were trained on the records about to be replaced: resuming them would mix
      # two data sets in one table.
      echo "error: $run_dir/$bundle holds folds trained on other records than the ones" \
        "needed now; move it away (or set REPRODUCE_DIR) and run this again" >&2
      exit 2
    fi
  done
  [ ! -d "$records" ] || echo "the records there are of another source or size, or damaged" \
    "or unfinished: building them again"
  rm -rf "$records"
  tf_quiet "$python" -m input.build --adience_dir "$adience_dir" --out_dir "$records" \
    --age_labels=paper --layout=aligned --protocol=folds --image_size "$image_size" \
    --workers "$(nproc)"
fi

# The loop's per-epoch evaluations use the center crop (add --eval_crops=10 to make them 10-crop,
# at 10x their cost); the tables' 10-crop figures come from each fold's final evaluation.
for bundle in "${bundles[@]}"; do
  step "The 5 folds with the $bundle bundle ($(bundle_settings "$bundle")), ${REPRODUCE_NP:-1} process(es)"
  bash "$root/launch/single_node.sh" --np "${REPRODUCE_NP:-1}" --module=trainer.cross_validate \
    --records="$records" --model_dir="$run_dir/$bundle" --bundle="$bundle" \
    --time_steps="${REPRODUCE_TIME_STEPS:-20}" "$@"
done

step "Written"
echo "records and manifest:   $records"
for bundle in "${bundles[@]}"; do
  printf '%-24s%s\n' "the $bundle bundle:" "$run_dir/$bundle/fold<k> (checkpoints, run.json, metrics.jsonl)"
done
echo "TensorBoard:            .venv/bin/tensorboard --logdir $run_dir"
finished=()
for bundle in "${bundles[@]}"; do
  if [ -f "$run_dir/$bundle/cross_validation.json" ]; then finished+=("$run_dir/$bundle"); fi
done
if [ ${#finished[@]} -lt ${#bundles[@]} ]; then
  echo "stopped before the last fold ended: run the same command again to resume"
fi
if [ ${#finished[@]} -gt 0 ]; then
  step "The tables beside Levi & Hassner's (the figures: cross_validation.json in each folder)"
  tf_quiet "$python" - "${finished[@]}" <<'EOF'
import os, sys
from trainer import cross_validate
for folder in sys.argv[1:]:
    results = cross_validate.load_results(os.path.join(folder, cross_validate.RESULTS_FILE))
    print(cross_validate.table(results, "age", os.path.basename(folder)) + "\n")
EOF
fi
