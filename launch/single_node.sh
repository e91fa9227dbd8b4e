#!/usr/bin/env bash
# Starts a training job: prints the command it runs, then runs it (see launch/launcher.py).
#
#   bash launch/single_node.sh --records=runs/demo/records --model_dir=runs/job --model=resnet
#   bash launch/single_node.sh --mode=mirrored --records=... --model_dir=...
#   bash launch/single_node.sh --np 2 --records=... --model_dir=...   # CPU: 2 Gloo processes
#   bash launch/single_node.sh --module=trainer.cross_validate --records=... --model_dir=...
#
# With GPUs: one --strategy=mirrored process (default: NCCL inside TensorFlow), or, when
# Horovod was built with NCCL (or --mode=horovod), horovodrun with one process per GPU.
# Without: one process, or --np N Horovod processes over Gloo, cores split between them
# (each rank bound to its own: launch/host.py).
# Every other flag goes to trainer.main (or the --module run).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$root/launch/venv.sh"
exec "$python" -m launch.launcher single_node "$@"
