#!/usr/bin/env bash
# The first command on a new GPU machine: the GPUs TensorFlow sees, trainer.distcheck under
# mirrored, Horovod (NCCL or host-memory Gloo collectives) and 2 local multi_worker processes,
# then a reduced benchmark on synthetic faces, and one verdict table (trainer/bench/gpu_check.py).
#
#   bash launch/gpu_check.sh                          # all GPUs; about 15 minutes on 8
#   bash launch/gpu_check.sh --out_dir=runs/gpu_check --models=levi_hassner,mobilenet_v2
#   bash launch/gpu_check.sh --cpu                    # the same sequence, reduced, on the CPU
#
# Exit codes: 0 all agree and every cell measured, 1 otherwise, 2 a bad flag, 4 no GPU.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
source "$root/launch/venv.sh"
exec "$python" -m trainer.bench.gpu_check "$@"
