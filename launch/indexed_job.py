"""Runs the trainer as one MultiWorkerMirroredStrategy worker of a Kubernetes indexed Job.

  python -m launch.indexed_job --workers=2 --service=agenet-workers -- \\
      --records=/data/records --model_dir=/data/runs/resnet --model=resnet --recipe=modern

launch/k8s/multi-worker-job.yaml runs this in every pod. A pod of an indexed Job
(`completionMode: Indexed`) gets its completion index in JOB_COMPLETION_INDEX and the hostname
`<job name>-<index>`; with `subdomain:` naming a headless Service, every pod is reachable at
`<job name>-<i>.<service>`. From these this writes the pod's TF_CONFIG (worker i is
`<job name>-<i>.<service>:<port>`, the worker of index i) and replaces itself with the trainer,
which then receives the pod's signals directly (SIGTERM on eviction: a checkpoint and exit 0).
The arguments after `--` go to the trainer. A pod without an index, or an index past
--workers, is one error line and exit 2.
"""

import json
import os
import socket
import sys

from absl import flags

from launch import entry

MODULES = ("trainer.main", "trainer.cross_validate", "trainer.evaluate", "trainer.distcheck")

flags.DEFINE_integer("workers", None, "Workers in the job: the Job's completions and "
                     "parallelism.", lower_bound=1)
flags.DEFINE_string("service", None, "The headless Service named by the pods' subdomain.")
flags.DEFINE_integer("port", 2222, "The port every worker listens on.", lower_bound=1024,
                     upper_bound=65535)
flags.DEFINE_enum("module", "trainer.main", MODULES, "The entry point each worker runs.")
flags.mark_flags_as_required(["workers", "service"])
FLAGS = flags.FLAGS


def tf_config(hostname, index, workers, service, port):
    """The TF_CONFIG of the pod `hostname` (`<job name>-<index>`) of an indexed Job."""
    suffix = f"-{index}"
    if not hostname.endswith(suffix):
        raise entry.UserError(f"hostname {hostname} does not end with the completion index "
                              f"{suffix}: run this in a pod of a Job with completionMode: "
                              f"Indexed")
    if index >= workers:
        raise entry.UserError(f"completion index {index} is not below --workers={workers}: "
                              f"--workers must equal the Job's completions")
    job_name = hostname[:-len(suffix)]
    return {"cluster": {"worker": [f"{job_name}-{i}.{service}:{port}" for i in range(workers)]},
            "task": {"type": "worker", "index": index}}


def main(argv):
    index = os.environ.get("JOB_COMPLETION_INDEX", "")
    if not index.isdigit():
        raise entry.UserError("JOB_COMPLETION_INDEX is not set: run this in a pod of a Job "
                              "with completionMode: Indexed")
    config = tf_config(socket.gethostname(), int(index), FLAGS.workers, FLAGS.service,
                       FLAGS.port)
    os.environ["TF_CONFIG"] = json.dumps(config)
    os.execv(sys.executable, [sys.executable, "-m", FLAGS.module, *argv[1:]])


if __name__ == "__main__":
    entry.run(main, positional="TRAINER_FLAG...")
