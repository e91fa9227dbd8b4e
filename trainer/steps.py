"""The training and evaluation steps, written for one replica; the strategy runs them on all.

Training step: forward and backward (compiled with XLA under --xla), then the strategy's
gradient reduction, the solver's per-variable learning-rate multipliers, and
`optimizer.apply_gradients`. Under tf.distribute the update stays outside XLA: compiling it
fails under MirroredStrategy (a resource of replica 1 read from CPU:0) and under
MultiWorkerMirroredStrategy on CPU (XLA has no CPU collectives); under Horovod, whose
all-reduce runs between the two, the update is compiled as a function of its own. For the same
reasons,
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


def replica_train_step(backend, model, optimizer, global_batch_size, num_classes,
                       label_smoothing=0.0, regularization=None, lr_multipliers=None,
                       xla=False):
    """The training step of one replica: its batch -> {"loss", "correct"} of its share.

    Args:
      regularization: None, or a function returning the L2 term of the whole model (the
        model module's caffe_l2 of its decay variables).
      lr_multipliers: {variable path: multiplier}, the others 1.
      xla: compile the forward and backward pass, and the update where the backend allows it
        (`backend.compiles_update`: one replica per process, the all-reduce outside).
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

    def update(grads):
        grads = [g if m == 1.0 else g * m for g, m in zip(grads, multipliers)]
        optimizer.apply_gradients(zip(grads, variables))

    if xla:
        forward_backward = tf.function(forward_backward, jit_compile=True)
        if backend.compiles_update:
            update = tf.function(update, jit_compile=True)

    def replica_step(batch):
        grads, loss, correct = forward_backward(batch_lib.inputs_of(batch),
                                                batch[batch_lib.LABEL])
        grads = backend.reduce_gradients(grads)
        if loss_scaling:  # every replica skips an overflowing step, or none does
            finite = backend.all_finite(grads)
            grads = [tf.where(finite, g, tf.fill(tf.shape(g), float("nan"))) for g in grads]
        update(grads)
        return {"loss": loss, "correct": correct}

    return replica_step


def train_step(backend, replica_step):
    """A tf.function running `replica_step` once on every replica's batch of a distributed
    batch; returns the global sums {"loss": the global batch's mean loss (without the L2
    term), "correct": correctly classified examples of the global batch}."""
    @tf.function
    def step(batch):
        return {key: backend.sum(value) for key, value in
                backend.run(replica_step, (batch,)).items()}

    return step


def train_call(backend, replica_step, optimizer, feed):
    """A tf.function running several training steps in one call, on the batches of `feed`
    (trainer.data's protocol), with nothing read back to the host in between:

        call(state, first_step, steps) -> {"loss": sum over the steps of the global batch's
            mean loss, "correct": correct examples over the steps, "learning_rate": the rate
            of the last step, "first_non_finite": the number of the first step whose loss was
            not finite, else -1, "non_finite_loss": that loss}

    `first_step` (the steps done so far) and `steps` are int64 tensors: calls of any length
    share one trace.
    """
    def one_step(state, step):
        learning_rate = tf.cast(optimizer.learning_rate, tf.float32)  # the rate this step uses
        inputs = feed.inputs(state, step)
        sums = backend.sum(backend.run(
            lambda inputs: _stacked(replica_step(feed.batch(inputs))), (inputs,)))
        return sums[0], sums[1], learning_rate

    @tf.function
    def call(state, first_step, steps):
        loss_sum = correct = learning_rate = non_finite_loss = tf.constant(0.0)
        first_non_finite = tf.constant(-1, tf.int64)
        for step in tf.range(first_step, first_step + steps):
            # Each step's update must land before the next step reads the weights.
            tf.autograph.experimental.set_loop_options(parallel_iterations=1)
            loss, step_correct, learning_rate = one_step(state, step)
            bad = tf.logical_and(first_non_finite < 0, tf.logical_not(tf.math.is_finite(loss)))
            first_non_finite = tf.where(bad, step + 1, first_non_finite)
            non_finite_loss = tf.where(bad, loss, non_finite_loss)
            loss_sum += loss
            correct += step_correct
        return {"loss": loss_sum, "correct": correct, "learning_rate": learning_rate,
                "first_non_finite": first_non_finite, "non_finite_loss": non_finite_loss}

    return call


def _stacked(metrics_of_replica):
    """{"loss", "correct"} as one tensor: one reduction across replicas instead of two."""
    return tf.stack([tf.cast(metrics_of_replica["loss"], tf.float32),
                     metrics_of_replica["correct"]])


def eval_step(backend, model, num_classes, feed):
    """A tf.function: (state, index) -> the summed confusion counts of evaluation step `index`
    of `feed` (trainer.data's protocol), one batch per replica.

    A 10-crop batch ([B, 10, c, c, 3]) is run as B x 10 crops and its probabilities averaged
    per example (metrics.confusion_counts); padded examples are masked out.
    """
    def replica_step(inputs):
        batch = feed.batch(inputs)
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
    def step(state, index):
        return backend.sum(backend.run(replica_step, (feed.inputs(state, index),)))

    return step
