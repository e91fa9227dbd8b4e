"""The layers whose behaviour across replicas the distribution decides: batch norm and dropout.

The strategy module (trainer.strategy, `backend.replica_layers`) makes one `ReplicaLayers` and
the model builders take their batch-norm and dropout layers from it, so that a model never asks
which backend runs it and never imports one. The defaults are one replica's.

- Batch norm over the global batch ("sync"): under tf.distribute, Keras' own
  `BatchNormalization(synchronized=True)`; under Horovod, `AllReducedBatchNormalization`, whose
  moments come from one SUM all-reduce the backend passes in (Horovod's own
  SyncBatchNormalization does not run under Keras 3). Over each replica's slice ("local"):
  plain batch norm, whose moving statistics the loop averages across replicas before every
  evaluation and checkpoint.
- `Dropout` draws each replica's mask from (its seed generator's next seed, the replica's
  index), so that N replicas draw N different masks. The state stays one for all replicas (each
  advances it alike): a checkpoint holds it once, and a resumed job draws on every replica the
  masks an uninterrupted one would have.
"""

import dataclasses
from typing import Callable

import keras
import tensorflow as tf

# Keras' stateless seeds: its int64 seed state folded into int32, which XLA's kernels need.
INT32_SEED_RANGE = tf.int32.max - 1


def only_replica():
    """The replica index of a job of one replica."""
    return 0


@dataclasses.dataclass(frozen=True)
class ReplicaLayers:
    """How a model's batch-norm and dropout layers behave across replicas.

    Attributes:
      batch_norm: a layer factory with keras.layers.BatchNormalization's arguments.
      replica_id: called inside the step: this replica's index among all replicas (an int or
        an int tensor).
    """
    batch_norm: Callable = keras.layers.BatchNormalization
    replica_id: Callable = only_replica

    def dropout(self, rate, name):
        return Dropout(rate, replica_id=self.replica_id, name=name)

    def with_batch_norm(self, model):
        """`model` (a functional model, e.g. a keras.applications backbone) rebuilt with this
        batch norm in place of each of its BatchNormalization layers, with its weights."""
        if self.batch_norm is keras.layers.BatchNormalization:
            return model

        def clone(layer):
            config = layer.get_config()
            if isinstance(layer, keras.layers.BatchNormalization):
                del config["synchronized"]  # this ReplicaLayers' batch norm decides
                return self.batch_norm(**config)
            return layer.__class__.from_config(config)

        rebuilt = keras.models.clone_model(model, clone_function=clone)
        rebuilt.set_weights(model.get_weights())
        return rebuilt


@keras.saving.register_keras_serializable(package="agenet")
class Dropout(keras.layers.Dropout):
    """Keras' dropout with the replica's index folded into every mask's seed (module
    docstring). One replica (index 0) draws other masks than Keras' Dropout, as reproducibly."""

    def __init__(self, rate, replica_id=only_replica, **kwargs):
        super().__init__(rate, **kwargs)
        self._replica_id = replica_id

    def call(self, inputs, training=False):
        if not training or self.rate == 0:
            return inputs
        seed = self.seed_generator.next()
        seed = tf.random.experimental.stateless_fold_in(
            seed, tf.cast(self._replica_id(), seed.dtype))
        seed = tf.cast(tf.math.floormod(seed, INT32_SEED_RANGE), tf.int32)
        return tf.nn.experimental.stateless_dropout(inputs, self.rate, seed,
                                                    noise_shape=self.noise_shape)


class AllReducedBatchNormalization(keras.layers.BatchNormalization):
    """Batch norm over the global batch: each replica's sums of x and x^2 and its count, summed
    over the replicas by one all-reduce, give the global batch's mean and variance (the
    all-reduce's gradient carries the other replicas' share back). Keras'
    `synchronized=True` does the same under tf.distribute only, with three all-reduces.

    Args:
      all_reduce_sum: [tensors] -> their sums over the replicas, inside the step.
    """

    def __init__(self, all_reduce_sum, **kwargs):
        super().__init__(**kwargs)
        self._all_reduce_sum = all_reduce_sum

    def _moments(self, inputs, mask):  # Keras' hook for the training batch's moments
        if mask is not None:
            raise ValueError(f"{self.name}: masked batch norm is not all-reduced")
        axes = self._reduction_axes
        count = tf.cast(tf.size(inputs) // tf.shape(inputs)[self.axis], inputs.dtype)
        total, squares, count = self._all_reduce_sum(
            [tf.reduce_sum(inputs, axes), tf.reduce_sum(tf.square(inputs), axes), count])
        mean = total / count
        # E(x^2) - E(x)^2, as Keras' synchronized moments; never below 0 by rounding.
        return mean, tf.maximum(squares / count - tf.square(mean), 0.0)
