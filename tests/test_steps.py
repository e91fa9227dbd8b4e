"""trainer.steps under MirroredStrategy with float16 loss scaling: when one replica's gradients
overflow, every replica skips the step (Keras' LossScaleOptimizer alone would let replica 0
decide, and apply the other replica's inf)."""

import json

from conftest import run

SCRIPT = """
import json
import keras
import numpy as np
import tensorflow as tf
from trainer import steps, strategy

backend = strategy.create("mirrored", logical_cpus=2)
keras.mixed_precision.set_global_policy("mixed_float16")
with backend.scope():
    inputs = {"image": keras.Input((4,)), "crop_offset": keras.Input((2,), dtype="int32"),
              "flip": keras.Input((), dtype="bool")}
    logits = keras.layers.Dense(3, dtype="float32")(keras.layers.Dense(4)(inputs["image"]))
    model = keras.Model(inputs, logits)
    optimizer = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.1))
    optimizer.build(model.trainable_variables)
before = [w.copy() for w in model.get_weights()]
images = np.ones((4, 4), np.float32)
images[2:] = 1e30  # the second replica's half overflows float16
batch = {"image": images, "crop_offset": np.zeros((4, 2), np.int32),
         "flip": np.zeros(4, bool), "label": np.zeros(4, np.int32)}
dataset = tf.data.Dataset.from_tensors(batch).unbatch().batch(2)
distributed = backend.distribute_dataset(lambda n, i, b: dataset, 4)
step = steps.train_step(backend, steps.replica_train_step(backend, model, optimizer, 4, 3))
step(next(iter(distributed)))
after = model.get_weights()
print(json.dumps({"finite": bool(all(np.all(np.isfinite(w)) for w in after)),
                  "unchanged": bool(all(np.array_equal(a, b) for a, b in zip(before, after))),
                  "scale": float(optimizer.dynamic_scale.numpy())}))
"""


def test_one_replica_overflowing_makes_every_replica_skip_the_step(python):
    result = run([python, "-c", SCRIPT])
    assert result.returncode == 0, result.stderr[-3000:]
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome == {"finite": True, "unchanged": True, "scale": 16384.0}
