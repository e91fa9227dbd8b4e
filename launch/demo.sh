#!/usr/bin/env bash
# The main job, from a fresh machine: set-up, then what the project can run so far.
#
#   bash launch/demo.sh
#
# Today that is the foundation: proof that distributed training on this machine computes what
# one device computes, with Horovod over Gloo (several processes) and with MirroredStrategy
# (several logical CPU devices in one process), and that the check catches an unreduced run.
# Knobs (environment): DEMO_PROCESSES (default 2).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
processes=${DEMO_PROCESSES:-2}
bash "$root/launch/setup.sh"
cd "$root"
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
python=$root/.venv/bin/python

echo
echo "== Horovod over Gloo: $processes processes on this host, each on its own part of the batch"
"$root/.venv/bin/horovodrun" --gloo -np "$processes" -H "localhost:$processes" \
  "$python" -m trainer.distcheck --strategy=horovod 2>/dev/null | grep -v '^\[[0-9]*\]<stdout>:{'

echo
echo "== MirroredStrategy over $processes logical CPU devices in one process"
"$python" -m trainer.distcheck --strategy=mirrored --logical_cpus="$processes" 2>/dev/null | grep -v '^{'

echo
echo "== The control: Horovod with the gradient all-reduce left out must DISAGREE"
if "$root/.venv/bin/horovodrun" --gloo -np "$processes" -H "localhost:$processes" \
  "$python" -m trainer.distcheck --strategy=horovod --inject=no_reduction 2>/dev/null \
  | grep -v '^\[[0-9]*\]<stdout>:{'; then
  echo "the control agreed: the check is broken" >&2
  exit 1
fi
echo
echo "Done. Next: bash launch/test.sh runs the test suite."
