"""The training and evaluation steps, written for one replica; the strategy runs them on all.

Training step: forward and backward (compiled with XLA under --xla), then the strategy's
gradient reduction, the solver's per-variable learning-rate multipliers, and
`optimizer.apply_gradients`, which stay outside XLA: compiling them fails under
MirroredStrategy (a resource of replica 1 read from CPU:0) and under
MultiWorkerMirroredStrategy on CPU (XLA has no CPU collectives). For the same reasons,
synchronized batch norm, which all-reduces inside the forward pass, cannot be compiled over
several replicas: trainer.loop refuses that job before any work.

The loss each replica differentiates is its share of the global batch's mean
(strategy.replica_loss) plus its share of the L2 term (divided by the number of replicas), so
the reduced gradient is the same under every strategy.
"""

import keras
import tensorflow as tf

from input import batch as batch_lib
from trainer import metrics
from trainer import strategy


def train_step(backend, model, optimizer, global_batch_size, num_classes, label_smoothing=0.0,
               regularization=None, lr_multipliers=None, xla=False):
    """A tf.function running one step on every replica; returns global sums of its metrics.

    Args:
      regularization: None, or a function returning the L2 term of the whole model (the
        model module's caffe_l2 of its decay variables).
      lr_multipliers: {variable path: multiplier}, the others 1.

    Returns:
      step(distributed batch) -> {"loss": the global batch's mean loss (without the L2 term),
      "correct": correctly classified examples of the global batch}.
    """
    variables = model.trainable_variables
    loss_scaling = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    multipliers = [(lr_multipliers or {}).get(v.path, 1.0) for v in variables]

    def forward_backward(features, labels):
        with tf.GradientTape() as tape:
            logits = model(features, training=True)
            per_example = keras.losses.categorical_crossentropy(
                tf.one_hot(labels, num_classes), logits, from_logits=True,
                label_smoothing=label_smoothing)
            loss = strategy.replica_loss(per_example, global_batch_size)
            total = loss
            if regularization is not None:
                total += backend.scale_regularization(regularization())
            scaled = optimizer.scale_loss(total)  # loss scaling under float16; else identity
        grads = tape.gradient(scaled, variables)
        correct = tf.reduce_sum(tf.cast(tf.equal(
            tf.argmax(logits, axis=-1, output_type=tf.int32), tf.cast(labels, tf.int32)),
            tf.float32))
        return grads, loss, correct

    if xla:
        forward_backward = tf.function(forward_backward, jit_compile=True)

    def replica_step(batch):
        grads, loss, correct = forward_backward(batch_lib.inputs_of(batch),
                                                batch[batch_lib.LABEL])
        grads = backend.reduce_gradients(grads)
        if loss_scaling:  # every replica skips an overflowing step, or none does
            finite = backend.all_finite(grads)
            grads = [tf.where(finite, g, tf.fill(tf.shape(g), float("nan"))) for g in grads]
        grads = [g if m == 1.0 else g * m for g, m in zip(grads, multipliers)]
        optimizer.apply_gradients(zip(grads, variables))
        return {"loss": loss, "correct": correct}

    @tf.function
    def step(batch):
        return {key: backend.sum(value) for key, value in
                backend.run(replica_step, (batch,)).items()}

    return step


def eval_step(backend, model, num_classes):
    """A tf.function: one evaluation batch per replica -> the summed confusion counts.

    A 10-crop batch ([B, 10, c, c, 3]) is run as B x 10 crops and its probabilities averaged
    per example (metrics.confusion_counts); padded examples are masked out.
    """
    def replica_step(batch):
        features = batch_lib.inputs_of(batch)
        crops = features[batch_lib.IMAGE].shape.rank == 5
        if crops:
            per_example = tf.shape(features[batch_lib.IMAGE])[:2]
            features = {key: tf.reshape(value, [-1] + value.shape[2:].as_list())
                        for key, value in features.items()}
        logits = model(features, training=False)
        if crops:
            logits = tf.reshape(logits, tf.concat([per_example, [num_classes]], 0))
        return metrics.confusion_counts(batch[batch_lib.LABEL], logits, batch[batch_lib.MASK],
                                        num_classes)

    @tf.function
    def step(batch):
        return backend.sum(backend.run(replica_step, (batch,)))

    return step
