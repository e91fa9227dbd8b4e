"""Checks that distributed training computes exactly what one device computes.

Trains a tiny Keras model for a few steps on a fixed global batch that is split across the
replicas, through the same strategy operations the trainer uses (replica loss, gradient
reduction, variable sync), and compares the weights with a plain single-device run on the whole
global batch, in the same process. Run it on a new machine or cluster before a long job:

  horovodrun --gloo -np 2 -H localhost:2 python -m trainer.distcheck --strategy=horovod
  python -m trainer.distcheck --strategy=mirrored --logical_cpus=2

Exit code 0 when every replica's weights match the single-device run within --tolerance, 1
otherwise. --inject deliberately makes one of the known distribution mistakes, to see that the
check catches it.
"""

import json
import os

from absl import flags

from launch import entry
from launch import host
from trainer import strategy

INJECTIONS = ("none", "no_reduction", "replica_mean_loss", "extra_sum_allreduce")
IMAGE_SHAPE = (8, 8, 3)
NUM_CLASSES = 8

flags.DEFINE_enum("strategy", "auto", strategy.STRATEGIES, "How training is distributed.")
flags.DEFINE_integer("logical_cpus", 0, "Split the CPU into this many devices (mirrored).",
                     lower_bound=0)
flags.DEFINE_integer("steps", 5, "Training steps.", lower_bound=1)
flags.DEFINE_integer("global_batch_size", 16, "Examples per step over all replicas.",
                     lower_bound=1)
flags.DEFINE_float("learning_rate", 0.1, "SGD learning rate (momentum 0.9).")
flags.DEFINE_integer("seed", 0, "Seed of the data and the initial weights.")
flags.DEFINE_float("tolerance", 1e-5, "Largest weight difference that counts as agreement.")
flags.DEFINE_enum("inject", "none", INJECTIONS, "Make one known mistake on purpose.")
flags.DEFINE_string("out_dir", None, "Write each process's weights here as weights-<i>.npz.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    threads = host.configure_threads()
    backend = strategy.create(FLAGS.strategy, logical_cpus=FLAGS.logical_cpus)
    result = check(backend, steps=FLAGS.steps, global_batch_size=FLAGS.global_batch_size,
                   learning_rate=FLAGS.learning_rate, seed=FLAGS.seed, inject=FLAGS.inject)
    result.update(threads=threads, tolerance=FLAGS.tolerance,
                  agree=result["max_abs_difference"] <= FLAGS.tolerance)
    if FLAGS.out_dir:
        _write_weights(FLAGS.out_dir, backend.process_index, result.pop("weights"))
    else:
        result.pop("weights")
    print(_summary(result), flush=True)
    print(json.dumps(result), flush=True)
    return 0 if result["agree"] else 1


def _summary(result):
    verdict = "AGREE" if result["agree"] else "DISAGREE"
    return (f"process {result['process']} of {result['processes']} ({result['strategy']}, "
            f"{result['replicas']} replicas, inject={result['inject']}, "
            f"{result['threads']['intra_op']} intra-op threads): weights vs one device on the "
            f"global batch: max |difference| {result['max_abs_difference']:.2e}, tolerance "
            f"{result['tolerance']:.0e}: {verdict}")


def check(backend, steps, global_batch_size, learning_rate, seed, inject="none"):
    """Trains under `backend` and on one device; returns the losses and the weights' distance."""
    import keras
    import numpy as np
    import tensorflow as tf

    if global_batch_size % backend.num_replicas:
        raise entry.UserError(f"--global_batch_size={global_batch_size} does not split over "
                              f"{backend.num_replicas} replicas")
    images, labels = _global_batches(steps, global_batch_size, seed)
    keras.utils.set_random_seed(seed)
    with backend.scope():
        model, optimizer = _model(), keras.optimizers.SGD(learning_rate, momentum=0.9)
        optimizer.build(model.trainable_variables)
    backend.sync_variables(model.variables + optimizer.variables)
    reference, reference_optimizer = _model(), keras.optimizers.SGD(learning_rate, momentum=0.9)
    reference.set_weights(model.get_weights())

    train_step = tf.function(_replica_train_step(backend, model, optimizer, global_batch_size,
                                                 inject))
    per_replica = global_batch_size // backend.num_replicas
    losses, reference_losses = [], []
    for step in range(steps):
        def shard(replica_id, step=step):
            rows = slice(replica_id * per_replica, (replica_id + 1) * per_replica)
            return tf.constant(images[step, rows]), tf.constant(labels[step, rows])
        losses.append(float(backend.sum(backend.run(train_step, backend.distribute_values(
            shard)))))
        reference_losses.append(float(_reference_step(reference, reference_optimizer,
                                                      images[step], labels[step])))
    weights = [np.asarray(w) for w in model.get_weights()]
    difference = max(float(np.max(np.abs(w - r))) for w, r in zip(weights,
                                                                 reference.get_weights()))
    return {"strategy": backend.name, "process": backend.process_index,
            "processes": backend.num_processes, "replicas": backend.num_replicas,
            "inject": inject, "losses": losses, "reference_losses": reference_losses,
            "max_abs_difference": difference, "weights": weights}


def _replica_train_step(backend, model, optimizer, global_batch_size, inject):
    import keras
    import tensorflow as tf

    from trainer import strategy

    def step(images, labels):
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            per_example = keras.losses.sparse_categorical_crossentropy(labels, logits,
                                                                       from_logits=True)
            if inject == "replica_mean_loss":
                loss = tf.reduce_mean(per_example)
            else:
                loss = strategy.replica_loss(per_example, global_batch_size)
        grads = tape.gradient(loss, model.trainable_variables)
        if inject != "no_reduction":
            grads = backend.reduce_gradients(grads)
        if inject == "extra_sum_allreduce":
            grads = backend.all_reduce_sum(grads)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    return step


def _reference_step(model, optimizer, images, labels):
    """What one device computes on the whole global batch: the oracle, written independently."""
    import keras
    import tensorflow as tf

    with tf.GradientTape() as tape:
        logits = model(images, training=True)
        loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(
            labels, logits, from_logits=True))
    optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables),
                                  model.trainable_variables))
    return loss


def _model():
    import keras

    return keras.Sequential([
        keras.Input(IMAGE_SHAPE),
        keras.layers.Conv2D(4, 3, activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(NUM_CLASSES),
    ])


def _global_batches(steps, global_batch_size, seed):
    import numpy as np

    rng = np.random.default_rng(seed)
    images = rng.normal(size=(steps, global_batch_size) + IMAGE_SHAPE).astype(np.float32)
    labels = rng.integers(0, NUM_CLASSES, size=(steps, global_batch_size)).astype(np.int32)
    return images, labels


def _write_weights(out_dir, process_index, weights):
    import numpy as np

    os.makedirs(out_dir, exist_ok=True)
    np.savez(os.path.join(out_dir, f"weights-{process_index}.npz"), *weights)


if __name__ == "__main__":
    entry.run(main)
