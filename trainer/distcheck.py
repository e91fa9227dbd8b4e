"""Checks that distributed training computes exactly what one device computes.

Runs the trainer's own training step (trainer.loop.prepare and loop.train_step: the real model
with its batch norm, the L2 term, the learning-rate multipliers, loss scaling under float16)
for a few steps on fixed global batches split across the replicas, and the same step on one
device on the whole global batches, in the same process; then compares the weights, the
batch-norm moving statistics and the optimizer state. Run it on a new machine or cluster before
a long job:

  horovodrun --gloo -np 2 -H localhost:2 python -m trainer.distcheck --strategy=horovod
  horovodrun --gloo -np 2 -H localhost:2 python -m trainer.distcheck --gradient_compression=fp16
  python -m trainer.distcheck --strategy=mirrored --logical_cpus=2
  python -m trainer.distcheck --strategy=mirrored --model=levi_hassner --recipe=paper

Both sides see the same pre-made batches (each input pipeline crops differently) and no dropout
(each replica draws its own masks). With --batch_norm=local each replica normalises its own
slice, which one device on the whole batch does not: the one-device side then normalises each
replica's slice of the batch over itself, and the replicas' moving statistics are averaged
first, as the trainer does before every evaluation and checkpoint.

Exit code 0 when every compared value matches one device within --tolerance (relative:
|a - b| / (1 + |b|)), 1 otherwise, 2 on a bad flag. --inject makes one known distribution
mistake on purpose, to see that the check catches it (no_reduction under Horovod only: under
tf.distribute Keras' apply_gradients reduces by itself). A model whose own rounding grows fast
needs fewer steps and a looser tolerance: MobileNetV2 from scratch at 32x32 moves its weights by
0.13 in 3 steps on one device when only the batch's order changes (README).
"""

import dataclasses
import functools
import json
import os

from absl import flags
import keras
import numpy as np
import tensorflow as tf

from input import batch as batch_lib
from launch import entry
from launch import horovod_build
from trainer import cli
from trainer import loop
from trainer import models
from trainer import recipes
from trainer import strategy
from trainer.models import replicas

INJECTIONS = ("none", "no_reduction", "replica_mean_loss", "extra_sum_allreduce",
              "unsynced_batch_norm")
# Small enough that every model checks in seconds; MobileNetV2's backbone needs 32.
CROP_SIZE = 32
# Float16 forward passes round differently on a slice and on the whole batch: levi_hassner_bn
# agreed within 1.1e-4 under mixed_float16 (2.5e-4 under mixed_bfloat16), and a doubled
# update differed by 5.5e-3.
TOLERANCES = {"fp32": 1e-5, "mixed_float16": 1e-3, "mixed_bfloat16": 1e-3}
# Gradients all-reduced as float16 (--gradient_compression=fp16) round each update to 11 bits:
# levi_hassner_bn in fp32 differed by 4.7e-6 after 3 steps (2.6e-8 uncompressed), under
# mixed_float16 by 2.9e-4.
FP16_GRADIENTS_TOLERANCE = 1e-4

cli.define_flags("strategy", "logical_cpus", "batch_size", "gradient_compression")
flags.DEFINE_enum("model", "levi_hassner_bn", models.names(), "The network.")
flags.DEFINE_enum("recipe", "modern", sorted(recipes.RECIPES), "The solver (paper: with the "
                  "model's learning-rate multipliers).")
flags.DEFINE_enum("precision", "fp32", sorted(loop.PRECISIONS), "mixed_float16 adds loss "
                  "scaling.")
flags.DEFINE_enum("batch_norm", "sync", strategy.BATCH_NORMS, "As the trainer's flag.")
flags.DEFINE_integer("crop_size", CROP_SIZE, "Side of the images.", lower_bound=1)
flags.DEFINE_integer("steps", 3, "Training steps.", lower_bound=1)
flags.DEFINE_integer("seed", 0, "Seed of the batches and the initial weights.")
flags.DEFINE_float("tolerance", None, "Largest relative difference that counts as agreement "
                   "(default: 1e-5 in fp32, 1e-4 with fp16 gradient compression, 1e-3 under "
                   "mixed precision).", lower_bound=0.0)
flags.DEFINE_enum("inject", "none", INJECTIONS, "Make one known mistake on purpose.")
flags.DEFINE_string("out_dir", None, "Write each process's model weights here as "
                    "weights-<process>.npz.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    threads = cli.start_process()
    backend = strategy.create(FLAGS.strategy, logical_cpus=FLAGS.logical_cpus,
                              gradient_compression=FLAGS.gradient_compression)
    config = loop.TrainConfig(
        model_dir=None, records=None, data="synthetic",  # nothing is read or written
        recipe=recipes.resolve(FLAGS.recipe, dropout=0.0), model=FLAGS.model,
        steps=FLAGS.steps, crop_size=FLAGS.crop_size, precision=FLAGS.precision,
        seed=FLAGS.seed, batch_norm=FLAGS.batch_norm, global_batch_size=FLAGS.batch_size)
    result = check(backend, config, FLAGS.inject)
    tolerance = (_default_tolerance(FLAGS.precision, FLAGS.gradient_compression)
                 if FLAGS.tolerance is None else FLAGS.tolerance)
    result.update(threads=threads, tolerance=tolerance,
                  agree=max(result["differences"].values()) <= tolerance)
    if backend.name == "horovod":  # what the reductions ran on, as launch/setup.sh built it
        result["horovod_collectives"] = horovod_build.collectives()
    weights = result.pop("weights")
    if FLAGS.out_dir:
        _write_weights(FLAGS.out_dir, backend.process_index, weights)
    print(_summary(result), flush=True)
    print(json.dumps(result), flush=True)
    return 0 if result["agree"] else 1


def _default_tolerance(precision, gradient_compression):
    if gradient_compression == "fp16":
        return max(TOLERANCES[precision], FP16_GRADIENTS_TOLERANCE)
    return TOLERANCES[precision]


def _summary(result):
    differences = ", ".join(f"{name} {value:.1e}" for name, value in
                            result["differences"].items())
    collectives = (f", Horovod's collectives {result['horovod_collectives']}"
                   if "horovod_collectives" in result else "")
    return (f"process {result['process']} of {result['processes']} ({result['strategy']}, "
            f"{result['replicas']} replicas, {result['model']}, {result['recipe']} recipe, "
            f"{result['precision']}, batch norm {result['batch_norm']}, inject="
            f"{result['inject']}, {result['threads']['intra_op']} intra-op threads"
            f"{collectives}): after "
            f"{result['steps']} steps vs one device on the global batch of "
            f"{result['global_batch_size']}, largest relative difference: {differences}; "
            f"tolerance {result['tolerance']:.0e}: "
            f"{'AGREE' if result['agree'] else 'DISAGREE'}")


def check(backend, config, inject="none"):
    """Trains `config`'s job under `backend` and on one device from the same weights, on the
    same batches; returns what was run, the losses and the largest differences."""
    job = loop.prepare(_with_mistake(config, inject), _with_mistake(backend, inject))
    backend.sync_variables(job.model.variables + job.optimizer.variables)
    # The same global batch, hence the same learning rate, on the one device.
    reference = loop.prepare(dataclasses.replace(config, global_batch_size=job.plan[
        "global_batch_size"]), _one_device_like(backend, config.batch_norm))
    reference.model.set_weights(job.model.get_weights())
    for mine, theirs in zip(reference.optimizer.variables, job.optimizer.variables):
        mine.assign(theirs)

    plan = job.plan
    if inject == "replica_mean_loss":  # the step divides by this replica's batch
        job = dataclasses.replace(job, plan={**plan,
                                             "global_batch_size": plan["per_replica_batch_size"]})
    run_step, run_reference = loop.train_step(job), loop.train_step(reference)
    losses, reference_losses = [], []
    for batch in _global_batches(config, job.info.num_classes, plan["global_batch_size"]):
        split = _split(backend, batch, plan["per_replica_batch_size"])
        losses.append(float(run_step(split)["loss"]))
        whole = _split(reference.backend, batch, plan["global_batch_size"])
        reference_losses.append(float(run_reference(whole)["loss"]))
    if config.batch_norm == "local" and inject != "unsynced_batch_norm":
        _average_moving_statistics(job)  # as the trainer before an evaluation or checkpoint
    return {**_describe(backend, config, job, inject), "global_batch_size":
            plan["global_batch_size"], "losses": losses,
            "reference_losses": reference_losses, "differences": _differences(job, reference),
            "weights": [np.asarray(w) for w in job.model.get_weights()]}


def _describe(backend, config, job, inject):
    """What was checked: the distribution, and which parts of the step were on."""
    family = models.get(config.model)
    multipliers = family.lr_multipliers(job.model) if config.recipe.lr_multipliers else {}
    return {"strategy": backend.name, "process": backend.process_index,
            "processes": backend.num_processes, "replicas": backend.num_replicas,
            "model": config.model, "recipe": config.recipe.name, "precision": config.precision,
            "batch_norm": config.batch_norm, "inject": inject, "steps": config.steps,
            "gradient_compression": backend.gradient_compression,
            "batch_norm_layers": len(models.moving_statistics(job.model)) // 2,
            "lr_multipliers": sum(m != 1 for m in multipliers.values()),
            "loss_scaling": isinstance(job.optimizer, keras.optimizers.LossScaleOptimizer)}


def _differences(job, reference):
    """The largest relative difference of each kind of state."""
    def largest(values, reference_values):
        return max((float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b))
                                 / (1 + np.abs(np.asarray(b)))))
                    for a, b in zip(values, reference_values)), default=0.0)

    return {"weights": largest(job.model.trainable_variables,
                               reference.model.trainable_variables),
            "moving_statistics": largest(models.moving_statistics(job.model),
                                         models.moving_statistics(reference.model)),
            "optimizer": largest(job.optimizer.variables, reference.optimizer.variables)}


def _with_mistake(thing, inject):
    """The config or the backend of the distributed side, with the injected mistake."""
    if isinstance(thing, loop.TrainConfig):
        if inject == "unsynced_batch_norm":  # each replica normalises its own slice
            return dataclasses.replace(thing, batch_norm="local")
        return thing
    if inject == "no_reduction":
        return _Replaced(thing, reduce_gradients=lambda grads: grads)
    if inject == "extra_sum_allreduce":
        return _Replaced(thing, reduce_gradients=lambda grads: thing.all_reduce_sum(
            thing.reduce_gradients(grads)))
    return thing


class _Replaced:
    """A backend with some of its operations replaced; the others are its own."""

    def __init__(self, backend, **operations):
        self._backend = backend
        vars(self).update(operations)

    def __getattr__(self, name):
        return getattr(self._backend, name)


def _one_device_like(backend, batch_norm):
    """One device; under --batch_norm=local, its batch norm normalises each of `backend`'s
    replicas' slices of the batch over itself."""
    one_device = strategy.create("one_device")
    if batch_norm != "local" or backend.num_replicas == 1:
        return one_device
    sliced = replicas.ReplicaLayers(batch_norm=functools.partial(SlicedBatchNormalization,
                                                                 slices=backend.num_replicas))
    return _Replaced(one_device, replica_layers=lambda batch_norm: sliced)


class SlicedBatchNormalization(keras.layers.BatchNormalization):
    """What `slices` replicas' local batch norm computes, on one device: each slice of the batch
    (one replica's) normalised over itself, the moving statistics moved by the slices' mean
    moments, which equals averaging the replicas' own statistics at the end (the moving average
    is linear in the moments)."""

    def __init__(self, slices, **kwargs):
        super().__init__(**kwargs)
        self._slices = slices

    def call(self, inputs, training=None, mask=None):
        if not (training and self.trainable) or mask is not None:
            return super().call(inputs, training=training, mask=mask)
        parts = tf.split(tf.cast(inputs, tf.float32), self._slices)  # float32, as Keras
        moments = [self._moments(part, None) for part in parts]
        outputs = [keras.ops.batch_normalization(
            part, mean, variance, axis=self.axis, epsilon=self.epsilon,
            offset=tf.cast(self.beta, tf.float32) if self.center else None,
            scale=tf.cast(self.gamma, tf.float32) if self.scale else None)
            for part, (mean, variance) in zip(parts, moments)]
        for statistic, values in ((self.moving_mean, [mean for mean, _ in moments]),
                                  (self.moving_variance, [variance for _, variance in moments])):
            statistic.assign(statistic * self.momentum
                             + tf.add_n(values) / self._slices * (1.0 - self.momentum))
        return tf.cast(tf.concat(outputs, 0), self.compute_dtype)


def _global_batches(config, num_classes, global_batch_size):
    """The same random global batches on every process and both sides: crops at the mean
    image's place (the synthetic data's mean covers the crop)."""
    rng = np.random.default_rng(config.seed)
    shape = (global_batch_size, config.crop_size, config.crop_size, 3)
    for _ in range(config.steps):
        yield batch_lib.make(rng.integers(0, 256, shape, dtype=np.uint8),
                             np.zeros((global_batch_size, 2), np.int32),
                             np.zeros(global_batch_size, bool),
                             rng.integers(0, num_classes, global_batch_size, dtype=np.int32))


def _split(backend, batch, per_replica_batch_size):
    """Each replica's rows of the global batch, in replica order."""
    def rows(replica_id):
        part = slice(replica_id * per_replica_batch_size,
                     (replica_id + 1) * per_replica_batch_size)
        return {key: tf.constant(value[part]) for key, value in batch.items()}

    return backend.distribute_values(rows)


def _average_moving_statistics(job):
    statistics = models.moving_statistics(job.model)
    if statistics and job.backend.num_replicas > 1:
        tf.function(lambda: job.backend.average_across_replicas(statistics))()


def _write_weights(out_dir, process_index, weights):
    os.makedirs(out_dir, exist_ok=True)
    np.savez(os.path.join(out_dir, f"weights-{process_index}.npz"), *weights)


if __name__ == "__main__":
    entry.run(main)
