#!/usr/bin/env bash
# Starts a training job: prints the command it runs, then runs it (see launch/launcher.py).
#
#   bash launch/multi_node.sh --hosts=host1:4,host2:4 --records=... --model_dir=...
#   bash launch/multi_node.sh --hostfile=hosts.txt --network_interface=eth0 --backend=horovod ...
#   bash launch/multi_node.sh --hosts=host1:4,host2:4 --backend=tf --records=... --model_dir=...
#
# --backend=horovod: one process per slot, horovodrun --gloo -H over ssh. --backend=tf: one
# MultiWorkerMirroredStrategy worker per host with a generated TF_CONFIG (ports from
# --base_port), over ssh; a host named localhost or 127.0.0.1 runs here. Default: tf when this
# host has GPUs and Horovod was built without NCCL (its collectives would go through host
# memory), else horovod. The repository, its environment (VENV=, default .venv) and the
# records must be at the same path on every host. --dry_run prints the commands.
# A mistake in these flags (hosts, ports, a stray argument) is one error line, exit code 2.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$root/launch/venv.sh"
exec "$python" -m launch.launcher multi_node "$@"
