"""The strategy module picks the backend from the launcher and gives every worker its own input
pipeline with the per-replica batch."""

import json

from conftest import json_lines, run
from trainer import strategy

# Run in a fresh process: logical devices must be set before TensorFlow starts.
PIPELINES = """
import json, sys
import tensorflow as tf
from trainer import strategy
backend = strategy.create(sys.argv[1], logical_cpus=2)
calls = []
def dataset_fn(num_pipelines, index, per_replica):
    calls.append([num_pipelines, index, per_replica])
    return tf.data.Dataset.range(1000).shard(num_pipelines, index).batch(per_replica)
batches = iter(backend.distribute_dataset(dataset_fn, global_batch_size=8))
first = backend.run(lambda b: tf.reduce_sum(b), (next(batches),))
print(json.dumps({"calls": calls, "replicas": backend.num_replicas,
                  "sum": int(backend.sum(first))}))
"""


def test_auto_follows_the_launcher():
    assert strategy.pick_strategy({"HOROVOD_RANK": "0", "HOROVOD_SIZE": "2"}) == "horovod"
    two_workers = {"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 0}}
    assert strategy.pick_strategy({"TF_CONFIG": json.dumps(two_workers)}) == "multi_worker"
    one_worker = {"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 0}}
    assert strategy.pick_strategy({"TF_CONFIG": json.dumps(one_worker)}) == "one_device"
    assert strategy.pick_strategy({}) == "one_device"  # no GPU here


def test_mirrored_replicas_share_one_pipeline_of_per_replica_batches(python):
    result = run([python, "-c", PIPELINES, "mirrored"])
    assert result.returncode == 0, result.stderr[-3000:]
    report = json_lines(result.stdout)[-1]
    assert report["calls"] == [[1, 0, 4]] and report["replicas"] == 2
    assert report["sum"] == sum(range(8))  # the two replicas took consecutive batches


def test_horovod_ranks_read_their_own_pipeline(horovodrun, python):
    result = run([horovodrun, "--gloo", "-np", "2", "-H", "localhost:2", python, "-c",
                  PIPELINES, "horovod"])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    reports = json_lines(result.stdout)
    assert sorted(r["calls"][0][1] for r in reports) == [0, 1]
    assert all(r["calls"][0][0] == 2 and r["calls"][0][2] == 4 for r in reports)
    # Rank r reads 0+r, 2+r, ... : the first batches are [0, 2, 4, 6] and [1, 3, 5, 7].
    assert all(r["sum"] == sum(range(8)) for r in reports)


def test_a_signal_between_two_loops_stops_the_second(python):
    # cross_validate: a signal during a finished fold's evaluation reaches that fold's handler;
    # the next fold must not start training as if nothing had been asked.
    code = ("import os, signal; from trainer import strategy\n"
            "first = strategy.StopSignal(agree=lambda requested: requested)\n"
            "assert not first.requested(0)\n"
            "os.kill(os.getpid(), signal.SIGTERM)\n"
            "second = strategy.StopSignal(agree=lambda requested: requested)\n"
            "print(second.requested(0), second.received)")
    result = run([python, "-c", code])
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["True", "SIGTERM"]
