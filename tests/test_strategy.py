"""The strategy module picks the backend from the launcher and gives every worker its own input
pipeline with the per-replica batch."""

import json

import numpy as np
import pytest

from conftest import json_lines, run
from launch import entry
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


# Under Horovod: each rank's pipeline, prefetched to the rank's device (here the second of two
# logical CPUs, where a GPU would be), read inside a compiled loop as the training loop reads it;
# then a few training steps with fp16 gradient compression beside one device (trainer.distcheck).
HOROVOD = """
import hashlib, json
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from trainer import distcheck, loop, recipes, strategy
backend = strategy.HorovodBackend(gradient_compression="fp16", input_device="/cpu:1")
calls = []
def dataset_fn(num_pipelines, index, per_replica):
    calls.append([num_pipelines, index, per_replica])
    return tf.data.Dataset.range(1000).shard(num_pipelines, index).batch(per_replica)
batches = iter(backend.distribute_dataset(dataset_fn, global_batch_size=8))
first = next(batches)

@tf.function
def sum_of_batches(iterator, steps):
    total = tf.constant(0, tf.int64)
    for _ in tf.range(steps):
        total += tf.reduce_sum(next(iterator))
    return total

later = sum_of_batches(batches, tf.constant(2))
config = loop.TrainConfig(model_dir=None, records=None, data="synthetic",
                          recipe=recipes.resolve("modern", dropout=0.0),
                          model="levi_hassner_bn", steps=3, crop_size=32, global_batch_size=16)
check = distcheck.check(backend, config)
weights = hashlib.sha256(b"".join(w.tobytes() for w in check["weights"])).hexdigest()
print(json.dumps({"calls": calls, "device": first.device,
                  "sum": int(backend.sum(tf.reduce_sum(first))), "later": int(backend.sum(later)),
                  "compression": backend.gradient_compression, "weights": weights,
                  "differences": check["differences"]}))
"""
# Relative differences from one device after 3 steps: 2.6e-8 with the gradients summed in
# float32, 4.7e-6 in float16 (11 bits).
FP16_GRADIENTS = (5e-7, 1e-4)


def test_horovod_ranks_read_their_own_prefetched_pipeline_and_agree_under_fp16_gradients(
        horovodrun, python, tmp_path):
    script = tmp_path / "horovod_ranks.py"  # a file: AutoGraph reads the loop's source
    script.write_text(HOROVOD)
    result = run([horovodrun, "--gloo", "-np", "2", "-H", "localhost:2", python, script])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    reports = json_lines(result.stdout)
    assert sorted(r["calls"][0][1] for r in reports) == [0, 1]
    assert all(r["calls"][0][0] == 2 and r["calls"][0][2] == 4 for r in reports)
    # Rank r reads 0+r, 2+r, ... : the first batches are [0, 2, 4, 6] and [1, 3, 5, 7].
    assert all(r["sum"] == sum(range(8)) for r in reports)
    assert all(r["later"] == sum(range(8, 24)) for r in reports)  # the next two, in order
    assert all(r["device"].endswith("device:CPU:1") for r in reports)
    # fp16 compression: the ranks end bitwise equal, within float16's rounding of one device.
    assert reports[0]["weights"] == reports[1]["weights"]
    for report in reports:
        assert report["compression"] == "fp16"
        assert FP16_GRADIENTS[0] < report["differences"]["weights"] < FP16_GRADIENTS[1]
        assert max(report["differences"].values()) < FP16_GRADIENTS[1]


def test_gradient_compression_is_refused_under_tf_distribute():
    # Even with one replica: the same command must not compress on one machine and fail on
    # the next. Refused before any device is set up.
    for name in ("one_device", "mirrored", "multi_worker"):
        with pytest.raises(entry.UserError) as refused:
            strategy.create(name, gradient_compression="fp16")
        message = str(refused.value)
        assert "--gradient_compression=fp16" in message and f"not {name}'s" in message
        assert "horovodrun" in message


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


# The layers the backend gives the models (trainer.models.replicas), with --batch_norm=local:
# one training-mode call on each replica's own images, then the moving statistics averaged.
REPLICA_LAYERS = """
import json, sys
import keras
import numpy as np
import tensorflow as tf
from trainer import strategy

backend = strategy.create(sys.argv[1], logical_cpus=2)
with backend.scope():
    layers = backend.replica_layers("local")
    inputs = keras.Input((4, 4, 3))
    normalized = layers.batch_norm(name="bn")(inputs)
    dropped = layers.dropout(0.5, "drop")(keras.layers.Flatten()(normalized))
    model = keras.Model(inputs, dropped)
statistics = model.get_layer("bn").non_trainable_variables

def local(value):  # this process's replicas' values of a per-replica value or variable
    return [np.asarray(v).tolist() for v in getattr(value, "values", (value,))]

images = backend.distribute_values(lambda replica: tf.random.stateless_normal(
    [2, 4, 4, 3], seed=[replica, 0]) + tf.cast(replica, tf.float32))
outputs = tf.function(lambda x: backend.run(lambda y: model(y, training=True), (x,)))(images)
before = [local(v.value) for v in statistics]
tf.function(lambda: backend.average_across_replicas(statistics))()
print(json.dumps({"process": backend.process_index,
                  "kept": [np.not_equal(o, 0).tolist() for o in local(outputs)],
                  "before": before, "after": [local(v.value) for v in statistics]}))
"""


def replicas_of(reports, key):
    """[variable][replica] values of `key`, the replicas of every process in order."""
    return np.concatenate([np.array(r[key]) for r in reports], axis=1)


def assert_replicas_differ_then_agree(reports):
    kept = np.concatenate([np.array(r["kept"]) for r in reports])
    assert kept.shape[0] == 2 and 0.3 < kept.mean() < 0.7  # dropout 0.5 on 2 replicas
    # Each replica draws its own mask (the same seed state everywhere would draw one mask).
    assert np.mean(kept[0] != kept[1]) > 0.3
    before, after = replicas_of(reports, "before"), replicas_of(reports, "after")
    # Local batch norm: each replica's moving mean and variance follow its own images...
    assert np.all(np.abs(before[:, 0] - before[:, 1]) > 1e-4)
    # ... until averaged: then every replica holds their mean.
    for variable_before, variable_after in zip(before, after):
        for replica in variable_after:
            np.testing.assert_allclose(replica, variable_before.mean(axis=0), rtol=1e-6)


def test_mirrored_replicas_draw_their_own_dropout_and_average_local_statistics(python):
    result = run([python, "-c", REPLICA_LAYERS, "mirrored"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert_replicas_differ_then_agree(json_lines(result.stdout)[-1:])


def test_horovod_ranks_draw_their_own_dropout_and_average_local_statistics(horovodrun, python):
    result = run([horovodrun, "--gloo", "-np", "2", "-H", "localhost:2", python, "-c",
                  REPLICA_LAYERS, "horovod"])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    reports = sorted(json_lines(result.stdout), key=lambda report: report["process"])
    assert [report["process"] for report in reports] == [0, 1]
    assert_replicas_differ_then_agree(reports)
