#!/usr/bin/env bash
# The main job, from a fresh machine: set-up, then everything the project can run so far.
#
#   bash launch/demo.sh
#   ADIENCE_DIR=~/data/adience bash launch/demo.sh   # a real Adience download instead
#
# 1. distributed training computes what one device computes (Horovod over Gloo, 2 processes;
#    MirroredStrategy over 2 logical CPUs), and the check catches an unreduced run;
# 2. synthetic Adience-format faces (unless ADIENCE_DIR is given);
# 3. sharded TFRecords of the paper's 5 folds, then verified against their manifest;
# 4. the input benchmark: the tf.data pipeline against its roof and the naive way;
# 5. a Horovod training run of the small ResNet (modern recipe) on 64x64 records of the same
#    faces, decoded once and held in memory (--data=resident), fold 0 held out, then its
#    10-crop evaluation with the confusion matrix;
# 6. its export as a SavedModel that takes image bytes, and a prediction on a few faces; then
#    from a photo to an age: the faces of a real photograph (scikit-image's astronaut) found,
#    aligned and predicted; the server (trainer.serve) called with curl as TF Serving is, and
#    its page in headless Chromium, saved as a screenshot (DEMO_DIR/page.png);
# 7. the training benchmark, each cell a run of the training loop: in-memory batches vs the
#    records' pipeline vs the records held in memory (--data=resident), 1 process vs 2, and its
#    chart.
# Knobs (environment): DEMO_DIR (runs/demo), ADIENCE_DIR, DEMO_SUBJECTS (synthetic albums),
# DEMO_PROCESSES (2), DEMO_EPOCHS (30), DEMO_BENCHMARK_WINDOWS (3).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
demo_dir=${DEMO_DIR:-$root/runs/demo}
processes=${DEMO_PROCESSES:-2}
bash "$root/launch/setup.sh"
cd "$root"
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
python=$root/.venv/bin/python
horovodrun=$root/.venv/bin/horovodrun
rank_json='^\[[0-9]*\]<stdout>:{'  # distcheck's JSON lines, for machines; people read the rest

step() { echo; echo "== $*"; }
# TensorFlow prints a few lines at import that come before it reads TF_CPP_MIN_LOG_LEVEL: keep
# the demo's output to what a person reads (errors still show).
tf_quiet() { "$@" 2> >(grep -v -e '^WARNING: All log messages before absl' -e '^I0000 ' >&2); }

step "Horovod over Gloo: $processes processes on this host, each on its own part of the batch"
"$horovodrun" --gloo -np "$processes" -H "localhost:$processes" \
  "$python" -m trainer.distcheck --strategy=horovod 2>/dev/null | grep -v "$rank_json"

step "MirroredStrategy over $processes logical CPU devices in one process"
"$python" -m trainer.distcheck --strategy=mirrored --logical_cpus="$processes" 2>/dev/null \
  | grep -v '^{'

step "The control: Horovod with the gradient all-reduce left out must DISAGREE"
if "$horovodrun" --gloo -np "$processes" -H "localhost:$processes" \
  "$python" -m trainer.distcheck --strategy=horovod --inject=no_reduction 2>/dev/null \
  | grep -v "$rank_json"; then
  echo "the control agreed: the check is broken" >&2
  exit 1
fi

adience_dir=${ADIENCE_DIR:-$demo_dir/adience}
if [ -z "${ADIENCE_DIR:-}" ]; then
  step "Synthetic faces in Adience's on-disk format: $adience_dir"
  rm -rf "$adience_dir"
  tf_quiet "$python" -m input.synthetic --out "$adience_dir" ${DEMO_SUBJECTS:+--subjects "$DEMO_SUBJECTS"}
fi

records=$demo_dir/records
step "TFRecords of the paper's 5 folds (paper labels, aligned faces): $records"
rm -rf "$records"
tf_quiet "$python" -m input.build --adience_dir "$adience_dir" --out_dir "$records" --workers "$processes"

step "Every shard checked against the manifest"
tf_quiet "$python" -m input.verify "$records"

step "Input benchmark: records built with 1 and 2 workers, the pipeline against its roof"
tf_quiet "$python" -m input.benchmark --adience_dir "$adience_dir" --work_dir "$demo_dir/input_benchmark" \
  --seconds 4 --repeats 1 | grep -v '^{'

# Small images so that a network learns within minutes on a CPU; the paper's 256x256 records
# above are what a GPU trains on (launch/reproduce.sh). Resident: each rank, bound to its own
# core, no longer decodes JPEGs on the core it trains on (README, "Measuring training
# throughput": 1.09x the records' images/s for this job).
small_records=$demo_dir/records_64
model_dir=$demo_dir/resnet
step "Training: the small ResNet, modern recipe, Horovod over $processes processes, 56x56 crops of 64x64 records held in memory"
rm -rf "$small_records" "$model_dir"
tf_quiet "$python" -m input.build --adience_dir "$adience_dir" --out_dir "$small_records" \
  --workers "$processes" --image_size 64 | grep '^wrote'
"$horovodrun" --gloo -np "$processes" -H "localhost:$processes" \
  "$python" -m trainer.main --records="$small_records" --data=resident --model_dir="$model_dir" \
  --model=resnet --recipe=modern --crop_size=56 --epochs="${DEMO_EPOCHS:-30}" --log_every=100 \
  --eval_every=400 2>/dev/null | "$python" launch/summarize_log.py

step "Evaluation of the last checkpoint on the held-out fold 0, 10 crops"
tf_quiet "$python" -m trainer.evaluate --model_dir="$model_dir" --eval_crops=10 | grep -v '^{'

export_dir=$model_dir/export
step "Export: a SavedModel that takes JPEG/PNG bytes: $export_dir"
rm -rf "$export_dir"
tf_quiet "$python" -m trainer.export --model_dir="$model_dir" --export_dir="$export_dir" | grep -v '^{'

step "Prediction on a few held-out faces (fold 0), with the truth from the fold file"
faces=$(awk -F'\t' 'NR > 1 && NR % 40 == 2 {print "'"$adience_dir"'/aligned/" $1 "/landmark_aligned_face." $3 "." $2 "\t" $4}' \
  "$adience_dir/fold_0_data.txt" | head -n 4)
echo "$faces" | awk -F'\t' '{print "truth " $2 ": " $1}'
tf_quiet "$python" -m trainer.predict --saved_model="$export_dir" $(echo "$faces" | cut -f1)

photo=$("$python" -c 'import importlib.resources as r; print(r.files("skimage") / "data" / "astronaut.png")')
step "From a photo to an age: the faces of a real photograph found, aligned and predicted: $photo"
tf_quiet "$python" -m trainer.predict --saved_model="$export_dir" --detect_faces "$photo"

step "The server: TF Serving's REST API called with curl, and the page in a browser"
serve_log=$demo_dir/serve.log
"$python" -m trainer.serve --saved_model="$export_dir" --port=0 > "$serve_log" 2>&1 &
serve_pid=$!
trap 'kill "$serve_pid" 2>/dev/null || true' EXIT
until grep -q '^serving ' "$serve_log"; do
  kill -0 "$serve_pid" 2>/dev/null || { cat "$serve_log" >&2; exit 1; }
  sleep 1
done
url=$(sed -n 's/^serving .* at \(http[^ ]*\) .*/\1/p' "$serve_log")
echo "trainer.serve is at $url"
face=$(echo "$faces" | head -n 1 | cut -f1)
if command -v curl >/dev/null 2>&1; then
  echo "POST ${url}v1/models/agenet:predict with one face as base64 JPEG:"
  printf '{"instances": [{"b64": "%s"}]}' "$(base64 -w0 "$face")" \
    | curl -sS -H 'Content-Type: application/json' --data-binary @- "${url}v1/models/agenet:predict"
  echo
fi
if tf_quiet "$python" -m launch.browser --url="$url" --photo="$photo" --screenshot="$demo_dir/page.png" \
  | grep -v '^{'; then
  screenshot="$demo_dir/page.png"
else
  screenshot="none (no browser: see the line above)"
fi
kill "$serve_pid"
wait "$serve_pid" || true
trap - EXIT

benchmark_dir=$demo_dir/benchmark
step "Training throughput of the same job: in-memory batches vs the records (pipeline, resident), 1 process vs $processes"
rm -rf "$benchmark_dir"
tf_quiet "$python" -m trainer.benchmark --records="$small_records" --crop_size=56 --models=resnet \
  --batch_sizes=64 --data=synthetic,records,resident --distributions="one_device,horovod:$processes" \
  --warmup_steps=5 --window_steps=5 --windows="${DEMO_BENCHMARK_WINDOWS:-3}" \
  --out_dir="$benchmark_dir" 2>/dev/null | sed '/^scaling model/,$d'

step "Written"
echo "synthetic Adience tree: $adience_dir"
echo "records and manifest:   $records (256x256), $small_records (64x64)"
echo "training job:           $model_dir (checkpoints/, metrics.jsonl, run.json)"
echo "SavedModel:             $export_dir"
echo "the page's screenshot:  $screenshot (python -m trainer.serve --saved_model=$export_dir)"
echo "TensorBoard:            .venv/bin/tensorboard --logdir $model_dir/tensorboard"
echo "benchmark:              $benchmark_dir (benchmark.jsonl, chart benchmark.png)"
echo "Next: bash launch/test.sh runs the test suite."
